"""The store's file set (issue #16.1): a missing, duplicated, reordered or foreign log segment or checkpoint --
the newest segment included -- is a problem for ``verify`` and a CorruptionError for a strict ``open``; epochs
are contiguous across segments and after a checkpoint; what an interrupted roll, checkpoint or compaction leaves
is a note, removed by the next writer. Also #16.2 (recovery="truncate" keeps intact later segments and makes the
lost history raise HistoryError) and the crafted-file cases of #16.5."""
import json
import os
import shutil
import struct
import warnings

import numpy as np
import pytest

import mmsb
from mmsb import checkpoint as C
from mmsb import container as K
from mmsb.errors import CorruptionError, HistoryError, TornWriteWarning
from mmsb.log.segment import iter_segments

pytestmark = pytest.mark.reliability


def _build(root, n=60, ckpt_at=(20, 40), seg=1500, compact=False):
    """A counter page incremented by 1 per commit: the state at epoch e is known exactly (e - 1 after create)."""
    states = {}
    with mmsb.open(root, "w", segment_bytes=seg, auto_checkpoint=False) as buf:
        p = buf.create_page("c", 4, dtype="int64")
        states[buf.epoch] = np.zeros(4, np.int64)
        for k in range(n):
            buf.write(p, 1, index=[k % 4], accumulate=True)
            states[buf.epoch] = buf[p].read()
            if buf.epoch in ckpt_at:
                buf.checkpoint()
        if compact:
            buf.compact()
    return states


def _segs(root):
    return [p for _, p in iter_segments(os.path.join(root, "log"))]


def _refused(root):
    """verify reports a problem and strict opens (read-only and writing) raise CorruptionError."""
    rep = mmsb.verify(root)
    assert not rep.ok
    for mode in ("r", "a"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(CorruptionError):
                mmsb.open(root, mode)
    return rep


@pytest.fixture
def store(tmp_path):
    root = str(tmp_path / "s")
    states = _build(root)
    assert len(_segs(root)) >= 5 and mmsb.verify(root).ok
    return root, states


@pytest.mark.parametrize("which", ["first", "middle", "newest"])
def test_missing_segment(store, which):
    root, _ = store
    segs = _segs(root)
    os.unlink({"first": segs[0], "middle": segs[len(segs) // 2], "newest": segs[-1]}[which])
    rep = _refused(root)
    assert any("missing" in p for p in rep.problems), rep.problems


def test_duplicated_segment(store):
    """A copy of a segment under the name of a later epoch (its header names another epoch: a problem either way)."""
    root, _ = store
    segs = _segs(root)
    base = iter_segments(os.path.join(root, "log"))[-1][0] + 100
    shutil.copy(segs[1], os.path.join(root, "log", f"{base:020d}.seg"))
    _refused(root)


def test_reordered_segments(store):
    root, _ = store
    segs = _segs(root)
    a, b = segs[1], segs[2]
    tmp = a + ".x"
    os.rename(a, tmp)
    os.rename(b, a)
    os.rename(tmp, b)
    _refused(root)


def test_foreign_segment_with_the_right_name(store, tmp_path):
    """Another store's segment of the same base epoch: same name, valid CRCs, another salt."""
    root, _ = store
    other = str(tmp_path / "o")
    _build(other)
    name = os.path.basename(_segs(root)[2])
    assert os.path.exists(os.path.join(other, "log", name))
    shutil.copy(os.path.join(other, "log", name), os.path.join(root, "log", name))
    rep = _refused(root)
    assert any("salt" in p or "MANIFEST" in p for p in rep.problems), rep.problems


def test_foreign_and_missing_checkpoints(store, tmp_path):
    root, _ = store
    saved = str(tmp_path / "saved")
    shutil.copytree(root, saved)
    other = str(tmp_path / "o")
    _build(other)
    # a foreign checkpoint of the same epoch replaces ours
    shutil.copy(C.checkpoint_path(other, 20), C.checkpoint_path(root, 20))
    _refused(root)
    # a checkpoint deleted
    shutil.rmtree(root)
    shutil.copytree(saved, root)
    os.unlink(C.checkpoint_path(root, 20))
    _refused(root)
    # a foreign checkpoint between ours, not listed
    shutil.rmtree(root)
    shutil.copytree(saved, root)
    with mmsb.open(other, "a") as buf:
        assert buf.epoch == 61
    shutil.copy(C.checkpoint_path(other, 40), C.checkpoint_path(root, 30))
    _refused(root)


def test_manifest_missing_or_damaged(store, tmp_path):
    root, _ = store
    saved = str(tmp_path / "saved")
    shutil.copytree(root, saved)
    os.unlink(os.path.join(root, "MANIFEST"))
    _refused(root)
    size = os.path.getsize(os.path.join(saved, "MANIFEST"))
    for off in range(0, size, max(1, size // 40)):
        shutil.rmtree(root)
        shutil.copytree(saved, root)
        with open(os.path.join(root, "MANIFEST"), "r+b") as f:
            f.seek(off)
            b = f.read(1)[0]
            f.seek(off)
            f.write(bytes([b ^ 0x10]))
        _refused(root)


def test_interrupted_roll_and_compaction_leave_notes_not_problems(store):
    """An unlisted header-only segment after the newest one (a roll cut before the MANIFEST listed it) and an
    unlisted segment before the oldest one (a compaction cut after unlisting it) are notes; the next writer
    removes them; readers ignore them."""
    root, states = store
    from mmsb.log.segment import build_header

    last = iter_segments(os.path.join(root, "log"))[-1][0]
    newer = os.path.join(root, "log", f"{last + 1000:020d}.seg")
    with open(newer, "wb") as f:
        f.write(build_header(os.urandom(16), last + 1000) + bytes(100))
    first = iter_segments(os.path.join(root, "log"))[0]
    with mmsb.open(root, "a") as buf:        # (compaction at the newest checkpoint)
        buf.compact()
    os_first = iter_segments(os.path.join(root, "log"))[0]
    assert os_first[0] > first[0] and not os.path.exists(newer)    # the writer removed the leftover
    stale = os.path.join(root, "log", f"{first[0]:020d}.seg")      # a compaction leftover before the first
    shutil.copy(os_first[1], stale)
    rep = mmsb.verify(root)
    assert rep.ok, rep.problems
    assert any("interrupted" in n for n in rep.notes)
    with mmsb.open(root, "r") as buf:
        np.testing.assert_array_equal(buf["c"].read(), states[max(states)])
    with mmsb.open(root, "a"):
        pass
    assert not os.path.exists(stale)


def test_epochs_contiguous_after_checkpoint(store):
    """A segment that starts after the checkpoint is missing from the MANIFEST and the directory alike (the
    MANIFEST rewritten without it, as an attacker or a buggy tool could): the epochs after the checkpoint are not
    contiguous, and open refuses instead of building a state no commit produced."""
    root, _ = store
    from mmsb.manifest import read_manifest

    man = read_manifest(root)
    segs = iter_segments(os.path.join(root, "log"))
    after = [(b, p) for b, p in segs if b > 41]
    victim = after[0]
    os.unlink(victim[1])
    man.segments = [s for s in man.segments if s[0] != victim[0]]
    man.save()
    rep = _refused(root)
    assert any("follow" in p or "missing" in p or "starts" in p for p in rep.problems), rep.problems


def test_truncate_keeps_intact_segments_after_covered_damage(tmp_path):
    """#16.2: one flipped byte in an old segment that a checkpoint covers: recovery="truncate" cuts out only that
    history (a warning names the epochs), keeps every later commit, and at(e) in the lost range raises
    HistoryError while at(e) past the checkpoint still works."""
    root = str(tmp_path / "s")
    states = _build(root, n=60, ckpt_at=(45,))
    segs = iter_segments(os.path.join(root, "log"))
    base, victim = segs[1]
    assert segs[2][0] - 1 <= 45
    with open(victim, "r+b") as f:
        f.seek(200)
        b = f.read(1)[0]
        f.seek(200)
        f.write(bytes([b ^ 1]))
    assert not mmsb.verify(root).ok
    with pytest.warns(TornWriteWarning, match=r"epochs \d+\.\.\d+"):
        buf = mmsb.open(root, "a", recovery="truncate")
    with buf:
        final = max(states)
        assert buf.epoch == final
        np.testing.assert_array_equal(buf["c"].read(), states[final])
        lost = buf._store.lost_ranges
        assert len(lost) == 1
        a, b = lost[0]
        assert base <= a <= b <= 45
        with pytest.raises(HistoryError):
            buf.at(a)
        with pytest.raises(HistoryError):
            buf.at(44)                    # replaying to it would cross the lost range
        np.testing.assert_array_equal(buf.at(50)["c"].read(), states[50])
        np.testing.assert_array_equal(buf.at(a - 1)["c"].read(), states[a - 1])
        e = buf.write("c", 1, index=[0], accumulate=True)
    assert mmsb.verify(root).ok, mmsb.verify(root).problems
    with mmsb.open(root, "r") as buf:
        assert buf.epoch == e
        with pytest.raises(HistoryError):
            buf.at(a)


def test_truncate_uncovered_damage_warns_naming_the_epochs(tmp_path):
    root = str(tmp_path / "s")
    states = _build(root, n=60, ckpt_at=(10,))
    segs = iter_segments(os.path.join(root, "log"))
    base, victim = segs[-2]
    assert base > 11
    with open(victim, "r+b") as f:
        f.seek(100)
        b = f.read(1)[0]
        f.seek(100)
        f.write(bytes([b ^ 1]))
    with pytest.warns(TornWriteWarning, match="lost"):
        buf = mmsb.open(root, "a", recovery="truncate")
    with buf:
        assert base - 1 <= buf.epoch < max(states)
        np.testing.assert_array_equal(buf["c"].read(), states[buf.epoch])
    assert mmsb.verify(root).ok


# ---------------------------------------------------------------------------------------------- crafted files

def _reseal_schema(root, mutate):
    """Rewrite the page_created record of the first segment with ``mutate(payload dict)`` and valid CRCs."""
    from mmsb.delta import SchemaOp
    from mmsb.log import records as R
    from mmsb.log import segment as S

    path = _segs(root)[0]
    data = bytearray(open(path, "rb").read())
    hdr = S.parse_header(data)
    res = S.scan_segment(path)
    rec = next(r for r in res.records if r.rtype == S.SCHEMA)
    op = R.decode_schema(rec.payload)
    pl = dict(op.payload)
    mutate(pl)
    body = R.dumps(pl)
    kind = op.kind.encode()
    payload = struct.pack("<H", len(kind)) + kind + struct.pack("<I", len(body)) + body
    payload += struct.pack("<H", len(op.arrays))
    for name, arr in op.arrays.items():
        nb = name.encode()
        payload += struct.pack("<H", len(nb)) + nb + R.encode_values_part(arr)[0]
    new = S.build_record(S.SCHEMA, rec.epoch, rec.txid, payload, hdr.salt)
    data[rec.offset:rec.end] = new
    open(path, "wb").write(bytes(data))
    return SchemaOp


@pytest.mark.parametrize("change", [
    {"shape": [-5]}, {"shape": [2**32, 2**32]}, {"shape": [2**70]}, {"shape": "abc"}, {"dtype": "|O"},
    {"dtype": "V8"}, {"name": 5}, {"shape": [[[[]]]]},
])
def test_crafted_schema_record_refused_and_reported(tmp_path, change):
    """#16.5: a correctly checksummed schema record with a bad shape or dtype raises CorruptionError on open
    (no ValueError/OverflowError/TypeError) and verify reports it."""
    root = str(tmp_path / "s")
    with mmsb.open(root, "w", auto_checkpoint=False) as buf:
        buf.create_page("c", 4)
        buf.write("c", 1.0, index=[0])
    _reseal_schema(root, lambda pl: pl.update(change))
    rep = mmsb.verify(root)
    assert not rep.ok and any("schema" in p for p in rep.problems), rep.problems
    for mode in ("r", "a"):
        with pytest.raises(CorruptionError):
            mmsb.open(root, mode)


def test_deep_json_refused(tmp_path):
    """#16.5: JSON nested 100,000 deep (a schema payload, STORE) is a CorruptionError, never RecursionError."""
    from mmsb.log import records as R

    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(CorruptionError):
        R.loads_json(deep)
    with pytest.raises(CorruptionError):
        R.loads_json(b"[" * 65 + b"]" * 65)
    assert R.loads_json(b"[" * 60 + b"]" * 60) is not None
    root = str(tmp_path / "s")
    with mmsb.open(root, "w", auto_checkpoint=False) as buf:
        buf.create_page("c", 4)
    _reseal_schema(root, lambda pl: pl.update(metadata=json.loads("[" * 70 + "]" * 70)))
    assert not mmsb.verify(root).ok
    with pytest.raises(CorruptionError):
        mmsb.open(root, "r")


def test_blosc2_part_declaring_2_to_40_elements(tmp_path):
    """#16.5: a blosc2 values part whose shape declares 2^40 elements is refused before anything is allocated."""
    from mmsb import codecs

    arr = np.zeros(1000)
    enc = codecs.encode_values(arr) if hasattr(codecs, "encode_values") else None
    import blosc2

    chunk = blosc2.compress2(arr.tobytes(), typesize=8)
    n = 2**40
    nch = -(-n * 8 // codecs.BLOSC_CHUNK)
    buf = struct.pack("<I", nch) + struct.pack(f"<{nch}Q", *([len(chunk)] * nch)) + chunk * nch
    with pytest.raises(CorruptionError):
        codecs.decode_values(codecs.BLOSC2, buf, np.float64, n)
    del enc


def test_checkpoint_manifest_shape_disagrees_with_array(tmp_path):
    """#16.5: a re-sealed checkpoint whose page description disagrees with its array is refused by open (here:
    with a fallback to replaying the log, since the log covers it) and reported by verify."""
    import hashlib

    import crc32c

    root = str(tmp_path / "s")
    with mmsb.open(root, "w", auto_checkpoint=False) as buf:
        buf.create_page("c", 8)
        buf.write("c", 1.0, index=[0])
        buf.checkpoint()
    path = C.checkpoint_path(root, 2)
    data = bytearray(open(path, "rb").read())
    tr = data[-64:]
    moff, mlen = struct.unpack_from("<QQ", tr)
    man = json.loads(bytes(data[moff:moff + mlen]))
    man["pages"][0]["meta"]["shape"] = [3, 3]
    mb = K._dumps(man)
    trail = struct.pack("<QQI32s8s", moff, len(mb), crc32c.crc32c(mb), hashlib.sha256(mb).digest(), b"MMSBEND\0")
    trail += struct.pack("<I", K._mask(crc32c.crc32c(trail)))
    open(path, "wb").write(bytes(data[:moff]) + mb + trail)
    with pytest.raises(CorruptionError, match="described"):
        C.verify_checkpoint(path)
    assert not mmsb.verify(root).ok


@pytest.mark.parametrize("bad", ["no_page", "index", "dtype", "mask"])
def test_checksummed_delta_that_does_not_fit_its_page(tmp_path, bad):
    """#16.5: a correctly checksummed DELTA that does not fit the page it names is refused by open and reported
    by verify (whatever open refuses, verify reports)."""
    from mmsb.delta import Delta, Txn
    from mmsb.log import DurableLog
    from mmsb.manifest import read_manifest

    root = str(tmp_path / "s")
    with mmsb.open(root, "w", auto_checkpoint=False) as buf:
        buf.create_page("c", 4)
        e = buf.write("c", 1.0, index=[0])
    d = {"no_page": Delta("zz", np.ones(2), index=np.array([0, 1])),
         "index": Delta("c", np.ones(2), index=np.array([0, 9])),
         "dtype": Delta("c", np.ones(2, dtype=np.int32), index=np.array([0, 1])),
         "mask": Delta("c", np.ones(2), mask=np.array([True, False, True, False, True]))}[bad]
    man = read_manifest(root)
    with DurableLog(root, manifest=man, segments=iter_segments(os.path.join(root, "log"))) as log:
        log.sync(log.append(Txn(e + 1, 77, [d])))
    rep = mmsb.verify(root)
    assert not rep.ok and any("does not fit" in p for p in rep.problems), rep.problems
    with pytest.raises(CorruptionError):
        mmsb.open(root, "r")

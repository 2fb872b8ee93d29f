"""Incremental automatic checkpoints (#16.11): a page unchanged since the newest checkpoint is not written again;
the new checkpoint (container version 3) borrows its chunks from the file that holds them. Every checkpoint still
loads to exactly the state at its epoch, verify checks the borrowed chunks, compaction keeps the files borrowed
from, and a missing, replaced or crafted reference is a CorruptionError naming the file."""
import json
import os
import shutil

import numpy as np
import pytest

import mmsb
from mmsb import checkpoint as C
from mmsb import container as K
from mmsb import spill as SP
from mmsb import store as D
from mmsb.errors import CorruptionError, HistoryError


def _pages(snap):
    return {m["name"]: a for m, a in snap.pages}


def _settle(buf):
    """Wait for the automatic checkpoint in flight, then let the policy look at the newest commit (it skips a
    commit while one is being written) and wait for the one that starts."""
    buf._store.wait_background()
    buf._store.after_commit(buf, buf.epoch)
    buf._store.wait_background()


def _history(root, monkeypatch, commits=40, **kw):
    """A hot page changed by every commit, a cold page never changed after its first write, a page dropped and
    recreated under the same name; automatic checkpoints after every commit. Returns {epoch: {name: array}}."""
    monkeypatch.setattr(D, "AUTO_CHECKPOINT_MIN_BYTES", 1)
    rng = np.random.default_rng(11)
    states = {}
    with mmsb.open(root, "w", durability="flush", auto_checkpoint=1e-9, **kw) as buf:
        hot = buf.create_page("hot", 3000)
        cold = buf.create_page("cold", 5000, dtype="int32")
        buf.write(cold, rng.integers(0, 1000, 5000).astype(np.int32))
        buf.create_page("again", 100)
        for k in range(commits):
            e = buf.write(hot, rng.random(50), index=rng.choice(3000, 50, replace=False))
            if k == commits // 2:
                buf.drop_page("again")
                buf.create_page("again", 100)
                e = buf.write("again", np.full(100, 7.0))
            _settle(buf)
            states[e] = {n: buf[n].read() for n in ("hot", "cold", "again")}
        st = buf.stats()["store"]
    return states, st


def test_auto_checkpoints_borrow_unchanged_pages(tmp_path, monkeypatch):
    root = str(tmp_path / "s")
    states, st = _history(root, monkeypatch)
    assert st["auto_checkpoint_error"] is None
    ckpts = st["checkpoints"]
    assert len(ckpts) >= 10 and st["incremental_checkpoints"] >= len(ckpts) - 2, st
    formats = {}
    hot_written = 0
    for e in ckpts:
        path = C.checkpoint_path(root, e)
        summ = C.verify_checkpoint(path)                       # every chunk's SHA-256, borrowed ones included
        formats[e] = summ["format"]
        got = _pages(C.load_checkpoint(root, epoch=e))
        for name, arr in states.get(e, {}).items():     # (the first ones follow the set-up commits)
            np.testing.assert_array_equal(got[name], arr, err_msg=f"{name} at {e}")
        if summ["format"] == 3:
            assert summ["refs"] and all(r < e for r in summ["refs"])
            man = C.read_checkpoint_file(path)[0]
            byname = {p["meta"]["name"]: p for p in man["pages"]}
            assert all("ref" in c for c in byname["cold"]["chunks"])        # never written again
            hot_written += not any("ref" in c for c in byname["hot"]["chunks"])
    assert 3 in formats.values() and formats[ckpts[0]] == 2
    assert hot_written >= len(ckpts) // 2                  # changed by (nearly) every commit: written anew
    # the cold page lies in the first checkpoint that holds it; the later ones are much smaller
    last = C.verify_checkpoint(C.checkpoint_path(root, ckpts[-1]))
    assert last["borrowed_bytes"] > 0
    assert os.path.getsize(C.checkpoint_path(root, ckpts[-1])) < 3000 * 8 + 5000 * 4 / 2
    assert mmsb.verify(root).ok
    with mmsb.open(root, "r") as buf:
        for name, arr in states[max(states)].items():
            np.testing.assert_array_equal(buf[name].read(), arr)
        for e in [e for e in ckpts if e in states][::3]:
            view = buf.at(e)
            for name, arr in states[e].items():
                np.testing.assert_array_equal(view[name].read(), arr)


def test_recreated_page_is_not_borrowed(tmp_path, monkeypatch):
    """A page dropped and created again under the same name between two checkpoints is written, not borrowed."""
    monkeypatch.setattr(D, "AUTO_CHECKPOINT_MIN_BYTES", 1)
    root = str(tmp_path / "s")
    with mmsb.open(root, "w", durability="flush", auto_checkpoint=1e-9) as buf:
        buf.create_page("a", 1000)
        buf.write("a", np.arange(1000.0))
        buf.create_page("b", 10)
        buf.write("b", 1.0, index=[0])
        _settle(buf)
        e0 = buf.epoch
        assert e0 in buf._store.checkpoints
        buf.drop_page("a")
        buf.create_page("a", 1000)               # zeros: same name, dtype and shape, other content
        buf.write("b", 2.0, index=[1])
        _settle(buf)
        e1 = buf.epoch
        assert e1 in buf._store.checkpoints
    np.testing.assert_array_equal(_pages(C.load_checkpoint(root, epoch=e1))["a"], np.zeros(1000))
    man = C.read_checkpoint_file(C.checkpoint_path(root, e1))[0]
    a = [p for p in man["pages"] if p["meta"]["name"] == "a"][0]
    assert not any("ref" in c for c in a["chunks"])


def test_spilled_unchanged_page_is_not_reloaded(tmp_path, monkeypatch):
    """Under a memory limit an automatic checkpoint borrows a spilled page that did not change: no reload."""
    monkeypatch.setattr(D, "AUTO_CHECKPOINT_MIN_BYTES", 1)
    n = 1 << 15
    with mmsb.open(str(tmp_path / "s"), "w", durability="flush", auto_checkpoint=1e-9,
                   memory_limit=int(2.5 * n * 8)) as buf:
        for k in "abcd":
            buf.create_page(k, n)
            buf.write(k, float(ord(k)), index=[1])
        _settle(buf)
        mem = buf._memory
        before = mem.reloads
        for i in range(5):
            buf.write("d", float(i), index=[i])        # only d changes; a and b stay spilled
            _settle(buf)
        assert buf.stats()["store"]["incremental_checkpoints"] >= 4
        assert mem.reloads == before
        assert buf["a"].read()[1] == float(ord("a"))


def test_compaction_keeps_borrowed_files_and_the_horizon(tmp_path, monkeypatch):
    root = str(tmp_path / "s")
    states, st = _history(root, monkeypatch, commits=30, segment_bytes=2000)   # small segments: compaction drops some
    last = max(states)
    with mmsb.open(root, "a", auto_checkpoint=False) as buf:
        base = buf.compact(keep=5)
        assert base == last - 5
        kept = list(buf._store.checkpoints)
        needed = {r for e in kept for r in C.checkpoint_refs(C.checkpoint_path(root, e))}
        assert needed and set(kept) == {e for e in kept if e >= base} | needed
        assert min(kept) < base                     # an older file stays: data that later checkpoints borrow
        with pytest.raises(HistoryError):
            buf.at(base - 1)
        for e in (base, last - 2, last):
            for name, arr in states[e].items():
                np.testing.assert_array_equal(buf.at(e)[name].read(), arr)
    assert mmsb.verify(root).ok
    for mode in ("r", "a"):
        with mmsb.open(root, mode, auto_checkpoint=False) as buf:
            assert buf.stats()["store"]["horizon"] == base     # not the older file kept as data
            with pytest.raises(HistoryError):
                buf.at(base - 1)
            for name, arr in states[last].items():
                np.testing.assert_array_equal(buf[name].read(), arr)
            np.testing.assert_array_equal(buf.at(base)["hot"].read(), states[base]["hot"])


def _v3(tmp_path):
    """A full checkpoint at 5 and one at 9 that borrows page a from it."""
    root = str(tmp_path / "c")
    a = np.arange(20000.0)
    b = np.ones(300, np.int32)
    m = {"name": "a", "shape": [20000], "dtype": "<f8"}
    C.write_checkpoint(root, 5, [(m, a), ({"name": "b", "shape": [300], "dtype": "<i4"}, b)], [], fsync=False)
    lay = C.load_checkpoint(root, epoch=5).layout
    C.write_checkpoint(root, 9, [(m, lay["a"]), ({"name": "b", "shape": [300], "dtype": "<i4"}, b * 2)], [],
                       fsync=False)
    return root, a, b


def test_missing_or_replaced_borrowed_file(tmp_path):
    root, a, b = _v3(tmp_path)
    p5, p9 = C.checkpoint_path(root, 5), C.checkpoint_path(root, 9)
    assert C.checkpoint_refs(p9) == [5] and C.checkpoint_refs(p5) == []
    saved = open(p5, "rb").read()
    os.remove(p5)
    with pytest.raises(CorruptionError, match="is missing") as ei:
        C.load_checkpoint(root, epoch=9)
    assert ei.value.file == p5
    with pytest.raises(CorruptionError):
        C.verify_checkpoint(p9)
    # another file of the same epoch (same pages, other content): its manifest digest differs
    C.write_checkpoint(root, 5, [({"name": "a", "shape": [20000], "dtype": "<f8"}, a + 1)], [], fsync=False)
    with pytest.raises(CorruptionError, match="not the one") as ei:
        C.load_checkpoint(root, epoch=9)
    assert ei.value.file == p5
    open(p5, "wb").write(saved)
    np.testing.assert_array_equal(_pages(C.load_checkpoint(root, epoch=9))["a"], a)
    # a flipped byte in the borrowed chunk is caught by its checksum, naming the file that holds it
    man = C.read_checkpoint_file(p5)[0]
    off = man["pages"][0]["chunks"][0]["offset"] + 100
    data = bytearray(saved)
    data[off] ^= 0x10
    open(p5, "wb").write(bytes(data))
    with pytest.raises(CorruptionError, match="checksum") as ei:
        C.load_checkpoint(root, epoch=9)
    assert ei.value.file == p5


def _rewrite_manifest(path, edit):
    """Apply ``edit`` to a container's manifest JSON and write the file back with valid checksums (a crafted
    but correctly checksummed file)."""
    import hashlib
    import struct

    data = bytearray(open(path, "rb").read())
    tr = data[-K.TRAIL_SIZE:]
    moff, mlen = struct.unpack_from("<QQ", tr)
    man = json.loads(bytes(data[moff:moff + mlen]))
    edit(man)
    mb = json.dumps(man).encode()
    trail = K._TRAIL.pack(moff, len(mb), K._crc32c(mb), hashlib.sha256(mb).digest(), K.END_MAGIC)
    out = bytes(data[:moff]) + mb + trail + K._U32.pack(K._mask(K._crc32c(trail)))
    open(path, "wb").write(out)


@pytest.mark.parametrize("how", ["ref_not_listed", "ref_newer", "past_end", "ref_in_v2", "no_refs",
                                 "bad_digest", "float_offset"])
def test_crafted_references_are_refused(tmp_path, how):
    root, a, b = _v3(tmp_path)
    p9 = C.checkpoint_path(root, 9)

    def edit(man):
        ch = man["pages"][0]["chunks"][0]
        if how == "ref_not_listed":
            ch["ref"] = 4
        elif how == "ref_newer":
            man["refs"][0]["epoch"] = 9
            ch["ref"] = 9
        elif how == "past_end":
            ch["offset"] = 10**9
        elif how == "ref_in_v2":
            man["format"] = 2
        elif how == "no_refs":
            man["refs"] = []
        elif how == "bad_digest":
            man["refs"][0]["sha256"] = "00" * 32
        elif how == "float_offset":
            ch["offset"] = float(ch["offset"])

    _rewrite_manifest(p9, edit)
    with pytest.raises(CorruptionError) as ei:
        C.load_checkpoint(root, epoch=9)
    assert ei.value.file in (p9, C.checkpoint_path(root, 5))
    with pytest.raises(CorruptionError):
        C.verify_checkpoint(p9)


def test_blobs_and_v2_writers_borrow_nothing(tmp_path):
    root, a, b = _v3(tmp_path)
    ref = C.load_checkpoint(root, epoch=5).layout["a"]
    with pytest.raises(ValueError):
        SP.write_blob_file(str(tmp_path / "x.spill"), ref)
    with pytest.raises(ValueError):                     # only older checkpoints can be borrowed from
        C.write_checkpoint(root, 4, [({"name": "a", "shape": [20000], "dtype": "<f8"}, ref)], [], fsync=False)


# ------------------------------------------------------------------ golden file of container version 3

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")


def test_golden_ckpt_v3_still_loads(tmp_path):
    """tests/golden/ckpt_v3 (tests/golden/make_golden_ckpt_v3.py, never regenerated): a full checkpoint and an
    incremental one that borrows from it; both load to the recorded arrays, verify, and keep their layout."""
    import hashlib

    meta = json.load(open(os.path.join(HERE, "expected_ckpt_v3.json")))
    root = tmp_path / "ckpt_v3"
    shutil.copytree(os.path.join(HERE, "ckpt_v3"), root)
    for e, want in meta["checkpoints"].items():
        path = C.checkpoint_path(str(root), int(e))
        summ = C.verify_checkpoint(path)
        assert summ["format"] == want["format"] and summ["refs"] == want["refs"]
        snap = C.load_checkpoint(str(root), epoch=int(e))
        got = _pages(snap)
        assert sorted(got) == sorted(want["arrays"])
        for name, w in want["arrays"].items():
            arr = got[name]
            assert arr.dtype.str == w["dtype"] and list(arr.shape) == w["shape"]
            assert hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest() == w["sha256"], (e, name)
        assert {n: sorted({c["ref"] for c in r.chunks}) for n, r in snap.layout.items()} == want["layout"]


# ------------------------------------------------------------------ shutdown checkpoint


def _long_tail(root, monkeypatch, **kw):
    monkeypatch.setattr(D, "SHUTDOWN_CHECKPOINT_MIN_BYTES", 1)
    monkeypatch.setattr(D, "AUTO_CHECKPOINT_MIN_BYTES", 1 << 40)      # no automatic checkpoint meanwhile
    rng = np.random.default_rng(2)
    buf = mmsb.open(root, "w", durability="flush", **kw)
    buf.create_page("x", 4000)
    buf.create_page("y", 10)
    buf.write("y", 1.0, index=[0])
    for _ in range(30):
        buf.write("x", rng.random(100), index=rng.choice(4000, 100, replace=False))
    return buf, {"x": buf["x"].read(), "y": buf["y"].read()}


def test_clean_close_writes_a_shutdown_checkpoint(tmp_path, monkeypatch):
    root = str(tmp_path / "s")
    buf, want = _long_tail(root, monkeypatch)
    epoch = buf.epoch
    assert epoch not in buf._store.checkpoints
    buf.close()
    assert C.list_checkpoints(root) == [epoch]
    with mmsb.open(root, "r") as rd:
        assert rd.stats()["store"]["checkpoints"] == [epoch]
        assert list(rd._log.txns(since=epoch)) == []             # nothing left to replay
        for k, v in want.items():
            np.testing.assert_array_equal(rd[k].read(), v)
        np.testing.assert_array_equal(rd.at(epoch - 5)["y"].read(), want["y"])
    assert mmsb.verify(root).ok
    # a second clean close with nothing new writes nothing
    with mmsb.open(root, "a"):
        pass
    assert C.list_checkpoints(root) == [epoch]


def test_no_shutdown_checkpoint_when_off_or_short(tmp_path, monkeypatch):
    root = str(tmp_path / "off")
    buf, _ = _long_tail(root, monkeypatch, auto_checkpoint=False)
    buf.close()
    assert C.list_checkpoints(root) == []
    monkeypatch.setattr(D, "SHUTDOWN_CHECKPOINT", False)
    root = str(tmp_path / "off2")
    buf, _ = _long_tail(root, monkeypatch)
    buf.close()
    assert C.list_checkpoints(root) == []


def test_failed_shutdown_checkpoint_still_closes(tmp_path, monkeypatch):
    """ENOSPC while writing the shutdown checkpoint: a RuntimeWarning naming the store, the lock is released,
    no temporary or half checkpoint is left, and the next open replays the log to the same state."""
    import errno

    root = str(tmp_path / "s")
    buf, want = _long_tail(root, monkeypatch)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device (injected)")

    monkeypatch.setattr(D, "write_checkpoint", full)
    with pytest.warns(RuntimeWarning, match="shutdown checkpoint"):
        buf.close()
    monkeypatch.undo()
    assert C.list_checkpoints(root) == []
    ckdir = os.path.join(root, "checkpoints")
    assert not os.path.isdir(ckdir) or not os.listdir(ckdir)
    with mmsb.open(root, "a", auto_checkpoint=False) as rd:   # (the lock was released)
        for k, v in want.items():
            np.testing.assert_array_equal(rd[k].read(), v)


def test_poisoned_log_writes_no_shutdown_checkpoint(tmp_path, monkeypatch):
    from mmsb.errors import LogPoisonedError

    root = str(tmp_path / "s")
    buf, _ = _long_tail(root, monkeypatch)
    buf._log._poison("fsync", OSError(5, "EIO (injected)"))
    with pytest.raises(LogPoisonedError):
        buf.write("y", 3.0, index=[1])
    try:
        buf.close()
    except LogPoisonedError:
        pass
    assert C.list_checkpoints(root) == []


def test_checkpoint_flush_syncs_rolled_segments(tmp_path, monkeypatch):
    """Under durability="flush" a roll does not sync the segment it closes; the flush before a checkpoint is
    published syncs every segment written since (else an OS crash could leave a durable checkpoint over a log
    with a hole before it)."""
    from mmsb.log import durable as LD

    synced = []
    real = LD.os.fsync

    def spy(fd):
        try:
            synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        except OSError:
            pass
        return real(fd)

    root = str(tmp_path / "s")
    with mmsb.open(root, "w", durability="flush", segment_bytes=600, auto_checkpoint=False) as buf:
        buf.create_page("x", 50)
        for k in range(12):
            buf.write("x", float(k), index=[k])
        segs = sorted(n for n in os.listdir(os.path.join(root, "log")) if n.endswith(".seg"))
        assert len(segs) >= 3
        monkeypatch.setattr(LD.os, "fsync", spy)
        buf.checkpoint()
        monkeypatch.undo()
    assert set(segs) <= set(synced), (segs, synced)

"""Corruption sweep: flip bytes (every byte in long mode, a random sample in CI) of the log segments, checkpoint
files, STORE and spill blobs of a small store. Every flip must be detected: verify reports a problem, and an open
either raises CorruptionError or (torn-tail repair, recovery="truncate") yields a committed prefix equal to the
model. Everything runs in-process: a crash would kill pytest."""
import os
import random
import shutil
import warnings

import numpy as np
import pytest

import mmsb
from mmsb import checkpoint as C
from mmsb import spill as SP
from mmsb.errors import CorruptionError, TornWriteWarning

import _workload as W
from _figures import count

pytestmark = [pytest.mark.reliability, pytest.mark.long_slow]
SEED = 5


@pytest.fixture(scope="module", params=["full", "incremental"])
def store(tmp_path_factory, request):
    """A small store with a checkpoint in the middle of its log; ``incremental``: close() adds a shutdown
    checkpoint (container version 3) that borrows the unchanged pages' chunks from that one."""
    from mmsb import store as D

    root = tmp_path_factory.mktemp("corrupt")
    path = str(root / "s")
    inc = request.param == "incremental"
    saved = D.SHUTDOWN_CHECKPOINT_MIN_BYTES
    D.SHUTDOWN_CHECKPOINT_MIN_BYTES = 1
    try:
        with mmsb.open(path, "w", functions=W.FUNCS, segment_bytes=1500, auto_checkpoint=inc) as buf:
            e0 = W.setup(buf)
            if inc:                             # a page no transaction touches: the shutdown checkpoint borrows it
                buf.create_page("still", 3000)
                e0 = buf.write("still", np.arange(3000.0))
            hist = {e0: W.initial_state()}
            for k in range(10):
                ops = W.gen_txn(SEED, 0, k)
                e = W.write_ops(buf, ops)
                hist[e] = W.apply_ops(hist[e - 1], ops)
                if k == 5:
                    buf.checkpoint()
    finally:
        D.SHUTDOWN_CHECKPOINT_MIN_BYTES = saved
    if inc:
        last = C.list_checkpoints(path)[-1]
        assert last == max(hist) and C.checkpoint_refs(C.checkpoint_path(path, last))
    return path, hist


def _files(path):
    out = [os.path.join(path, "STORE")]
    out += [os.path.join(path, "log", n) for n in sorted(os.listdir(os.path.join(path, "log")))]
    out += [os.path.join(path, "checkpoints", n) for n in sorted(os.listdir(os.path.join(path, "checkpoints")))]
    return out


def _offsets(size, LONG, rng, k=60):
    return range(size) if LONG else sorted(rng.sample(range(size), min(size, k)))


def _open_consistent(path, hist, mode, recovery="strict"):
    """Open; a CorruptionError is a detection; a successful open must hold a committed prefix of the model."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TornWriteWarning)
            buf = mmsb.open(path, mode, functions=W.FUNCS, recovery=recovery)
    except CorruptionError:
        return "raised"
    try:
        e = buf.epoch
        assert e in hist, f"opened at epoch {e}, which was never committed"
        assert not W.diff(W.state_of(buf), W.full_state(hist[e])), "opened to a state that is silently wrong"
        return "prefix" if e < max(hist) else "full"
    finally:
        buf.close()


def test_flip_every_byte(store, tmp_path, LONG):
    base, hist = store
    rng = random.Random(SEED)
    flips = 0
    for f in _files(base):
        rel = os.path.relpath(f, base)
        size = os.path.getsize(f)
        for off in _offsets(size, LONG, rng):
            target = os.path.join(base, rel)        # flipped in place, restored below (checks are read-only)
            with open(target, "r+b") as fh:
                fh.seek(off)
                b = fh.read(1)[0]
                fh.seek(off)
                fh.write(bytes([b ^ (1 << rng.randrange(8)) if rng.random() < 0.5 else b ^ 0xFF]))
            try:
                rep = mmsb.verify(base)
                assert not rep.ok, f"flip at {rel}@{off} not reported by verify"
                _open_consistent(base, hist, "r")
                if rel.startswith("log") and (not LONG or off % 4 == 0):
                    path = str(tmp_path / "w")            # recovery="truncate" writes: on a copy
                    shutil.copytree(base, path)
                    r2 = _open_consistent(path, hist, "a", recovery="truncate")
                    assert r2 in ("prefix", "full", "raised")
                    shutil.rmtree(path)
            finally:
                with open(target, "r+b") as fh:
                    fh.seek(off)
                    fh.write(bytes([b]))
            flips += 1
    count("bytes_flipped", flips)


def test_flip_spill_blobs(tmp_path, LONG):
    """Spill files: a flipped byte in a spilled page is a CorruptionError when the page is reloaded."""
    path = str(tmp_path / "s")
    rng = random.Random(1)
    buf = mmsb.open(path, "w", memory_limit=1000)
    try:
        pages = [buf.create_page(f"p{i}", 100) for i in range(4)]
        for i, p in enumerate(pages):
            buf.write(p, np.arange(100.0) + i)
        spill = os.path.join(path, "spill")
        files = sorted(os.listdir(spill))
        assert files, "nothing was spilled"
        flips = 0
        for name in files:
            fpath = os.path.join(spill, name)
            data = open(fpath, "rb").read()
            for off in _offsets(len(data), LONG, rng, k=40):
                bad = bytearray(data)
                bad[off] ^= 0xFF
                open(fpath, "wb").write(bytes(bad))
                with pytest.raises(CorruptionError):
                    SP.read_blob_file(fpath)
                flips += 1
            open(fpath, "wb").write(data)
        # a damaged spill file of a spilled page surfaces as CorruptionError on reload, never as wrong data (a
        # file kept for a resident page that was reloaded from it is rewritten when it changed: see test_memory)
        victim = next(p._spill for p in pages if p._spill is not None)
        data = bytearray(open(victim, "rb").read())
        data[len(data) // 2] ^= 0x55
        open(victim, "wb").write(bytes(data))
        with pytest.raises(CorruptionError):
            for p in pages:
                p.read()
        count("bytes_flipped", flips + 1)
    finally:
        try:
            buf.close()
        except Exception:
            pass


def test_truncate_every_length(store, tmp_path, LONG):
    """Cutting the last segment at any length is a torn tail: open repairs it to a committed prefix."""
    base, hist = store
    segs = sorted(os.listdir(os.path.join(base, "log")))
    last = os.path.join(base, "log", segs[-1])
    size = os.path.getsize(last)
    rng = random.Random(2)
    for cut in _offsets(size, LONG, rng, k=40):
        path = str(tmp_path / "t")
        shutil.copytree(base, path)
        with open(os.path.join(path, "log", segs[-1]), "r+b") as fh:
            fh.truncate(cut)
        got = _open_consistent(path, hist, "a")
        if C.list_checkpoints(base)[-1] == max(hist):
            # (the incremental store: its shutdown checkpoint covers the whole log, so a cut that removes a
            # committed transaction is damage, not a torn tail: open refuses it and verify reports it)
            assert got in ("full", "raised")
            assert mmsb.verify(path).ok == (got == "full")
        else:
            assert got in ("prefix", "full")
            assert mmsb.verify(path).ok
        shutil.rmtree(path)
        count("truncations")

"""The copies behind automatic checkpoints (mmsb.store): a changed large page is copied under the buffer lock into
a resident buffer the store keeps for the next checkpoint (the first made by a helper thread at half the
threshold), and the kernels leave a CPU to the background writer while it runs. Every checkpoint must still hold
exactly the state at its epoch while commits go on, the buffers must stay bounded, and close releases them."""
import threading
import time

import numpy as np

import mmsb
from mmsb import checkpoint as C
from mmsb import store as D


def _pages(root, epoch):
    return {m["name"]: a for m, a in C.load_checkpoint(root, epoch=epoch).pages}


def _count_buffers(monkeypatch):
    """Record the thread that made each resident buffer."""
    made = []
    real = D.resident_buffer

    def counted(nbytes):
        made.append((threading.current_thread().name, nbytes))
        return real(nbytes)

    monkeypatch.setattr(D, "resident_buffer", counted)
    return made


def _slow_writer(monkeypatch, seconds=0.004):
    """The background writer waits before it writes: commits go on while each checkpoint is in flight."""
    real = D.write_checkpoint

    def slow(*a, **kw):
        time.sleep(seconds)
        return real(*a, **kw)

    monkeypatch.setattr(D, "write_checkpoint", slow)


def test_checkpoints_taken_while_commits_go_on_equal_the_state_at_their_epoch(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "AUTO_CHECKPOINT_MIN_BYTES", 1)
    monkeypatch.setattr(D, "_COPY_BLOCK", 1)           # every page goes through the resident buffers
    made = _count_buffers(monkeypatch)
    _slow_writer(monkeypatch)
    root = str(tmp_path / "s")
    rng = np.random.default_rng(5)
    states = {}
    names = ("hot", "grid", "cold")
    with mmsb.open(root, "w", durability="flush", auto_checkpoint=1e-9) as buf:
        hot = buf.create_page("hot", 4000)
        grid = buf.create_page("grid", (30, 40), dtype="float32")
        cold = buf.create_page("cold", 5000, dtype="int32")
        buf.write(cold, rng.integers(0, 1000, 5000).astype(np.int32))
        for k in range(80):
            e = buf.write(hot, rng.random(60), index=rng.choice(4000, 60, replace=False))
            if k % 3 == 0:
                e = buf.write(grid, rng.random((30, 40)).astype(np.float32))
            states[e] = {n: buf[n].read() for n in names}
            if k % 4 == 3:              # the policy skips commits while one is written: start the next one now
                buf._store.wait_background()
                buf._store.after_commit(buf, e)
        buf._store.wait_background()
        st = buf.stats()["store"]
        store = buf._store
        kept = sum(b.nbytes for b in store._spares)
    assert st["auto_checkpoint_error"] is None
    ckpts = [e for e in st["checkpoints"] if e in states]
    assert len(ckpts) >= 5, st
    for e in ckpts:
        got = _pages(root, e)
        for n in names:
            np.testing.assert_array_equal(got[n].reshape(-1), states[e][n].reshape(-1), err_msg=f"{n} at {e}")
    # the buffers are reused: a few made (the first checkpoint's three pages, a page that one checkpoint did
    # not copy made again at most now and then), not one per copy; never more than one copy of the pages kept
    assert len(made) < len(ckpts), (len(made), len(ckpts))
    assert kept <= 4000 * 8 + 30 * 40 * 4 + 5000 * 4
    assert store._spares == []                          # released at close


def test_the_first_copy_buffers_are_made_by_the_helper(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "AUTO_CHECKPOINT_MIN_BYTES", 1)
    monkeypatch.setattr(D, "_COPY_BLOCK", 1)
    made = _count_buffers(monkeypatch)
    root = str(tmp_path / "s")
    rng = np.random.default_rng(6)
    # factor 2: the first write (at most about the page's bytes of log) cannot reach the threshold by itself
    with mmsb.open(root, "w", durability="flush", auto_checkpoint=2.0) as buf:
        p = buf.create_page("x", 20000)
        buf.write(p, rng.random(20000))
        states = {}
        while buf._store._prep is None:
            e = buf.write(p, rng.random(200), index=rng.choice(20000, 200, replace=False))
            states[e] = buf["x"].read()
            assert buf._store._bg is None               # (no automatic checkpoint before half the threshold)
        buf._store._prep.join()
        assert [t for t, _ in made] == ["mmsb-checkpoint-buffers"] and made[0][1] == 20000 * 8
        while buf._store._bg is None:
            e = buf.write(p, rng.random(200), index=rng.choice(20000, 200, replace=False))
            states[e] = buf["x"].read()
        buf._store.wait_background()
        first = buf._store.checkpoints[0]
        assert first == e and len(made) == 1            # the first copy took the helper's buffer
    np.testing.assert_array_equal(_pages(root, first)["x"], states[first])


def test_no_copy_buffers_are_kept_under_a_memory_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "AUTO_CHECKPOINT_MIN_BYTES", 1)
    monkeypatch.setattr(D, "_COPY_BLOCK", 1)
    made = _count_buffers(monkeypatch)
    root = str(tmp_path / "s")
    rng = np.random.default_rng(7)
    states = {}
    with mmsb.open(root, "w", durability="flush", auto_checkpoint=1e-9, memory_limit=1 << 24) as buf:
        p = buf.create_page("x", 3000)
        for _ in range(20):
            e = buf.write(p, rng.random(40), index=rng.choice(3000, 40, replace=False))
            states[e] = buf["x"].read()
            buf._store.wait_background()
            assert buf._store._spares == []
        ckpts = [e for e in buf._store.checkpoints if e in states]
    assert made == [] and len(ckpts) >= 5
    for e in ckpts:
        np.testing.assert_array_equal(_pages(root, e)["x"], states[e])


def test_copy_buffers_stay_within_the_block_budget(tmp_path, monkeypatch):
    """Kept buffers never exceed the allocator's budget for freed blocks (MMSB_BLOCK_CACHE); with none, nothing is
    kept or prepared, and the checkpoints are still exact."""
    monkeypatch.setattr(D, "AUTO_CHECKPOINT_MIN_BYTES", 1)
    monkeypatch.setattr(D, "_COPY_BLOCK", 1)
    monkeypatch.setenv("MMSB_BLOCK_CACHE", "40000")     # the hot page (32000 bytes) fits, not both pages
    root = str(tmp_path / "s")
    rng = np.random.default_rng(8)
    states = {}
    with mmsb.open(root, "w", durability="flush", auto_checkpoint=1e-9) as buf:
        hot = buf.create_page("hot", 4000)
        warm = buf.create_page("warm", 2000)
        for k in range(24):
            if k == 12:
                monkeypatch.setenv("MMSB_BLOCK_CACHE", "0")
            e = buf.write(hot, rng.random(30), index=rng.choice(4000, 30, replace=False))
            e = buf.write(warm, rng.random(30), index=rng.choice(2000, 30, replace=False))
            states[e] = {"hot": buf["hot"].read(), "warm": buf["warm"].read()}
            buf._store.wait_background()
            buf._store.after_commit(buf, e)
            buf._store.wait_background()
            kept = sum(b.nbytes for b in buf._store._spares)
            assert kept <= (40000 if k < 12 else 0), (k, kept)
        ckpts = [e for e in buf._store.checkpoints if e in states]
    assert len(ckpts) >= 10
    for e in ckpts:
        got = _pages(root, e)
        for n in ("hot", "warm"):
            np.testing.assert_array_equal(got[n], states[e][n])


def test_resident_buffer_is_aligned_writable_and_exact():
    b = D.resident_buffer(3 * 4096 + 5)
    assert b.dtype == np.uint8 and b.nbytes == 3 * 4096 + 5 and b.flags.writeable
    assert b.ctypes.data % 4096 == 0                    # O_DIRECT writes need page-aligned memory
    b[:] = 7
    assert int(b.sum()) == 7 * b.nbytes


def test_paced_log_flush_writes_back_every_segment_before_its_fsync(tmp_path, monkeypatch):
    """The background flush (paced) writes each segment written since the last flush back piece by piece, then
    fsyncs it: every segment is still synced, each after its own paced writeback."""
    import os

    from mmsb.log import durable as LD

    events = []

    def name(fd):
        return os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))

    real_paced, real_fsync = LD.write_back_paced, LD.os.fsync

    def paced(fd, step):
        events.append(("paced", name(fd), step))
        return real_paced(fd, step)

    def fsync(fd):
        events.append(("fsync", name(fd)))
        return real_fsync(fd)

    root = str(tmp_path / "s")
    with mmsb.open(root, "w", durability="flush", segment_bytes=600, auto_checkpoint=False) as buf:
        buf.create_page("x", 50)
        for k in range(12):
            buf.write("x", float(k), index=[k])
        segs = sorted(n for n in os.listdir(os.path.join(root, "log")) if n.endswith(".seg"))
        assert len(segs) >= 3
        monkeypatch.setattr(LD, "write_back_paced", paced)
        monkeypatch.setattr(LD.os, "fsync", fsync)
        buf._log.flush(True, paced=4096)
        monkeypatch.undo()
    synced = [e[1] for e in events if e[0] == "fsync"]
    assert set(segs) <= set(synced), (segs, events)
    for i, e in enumerate(events):
        if e[0] == "fsync":
            assert events[i - 1] == ("paced", e[1], 4096)

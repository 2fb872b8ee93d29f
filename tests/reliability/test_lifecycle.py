"""Store lifecycle hardening (issues #16.3, #16.4, #16.7, #16.8, #16.9 and #14's cleanup_temp): readers beside a
compacting writer keep what they opened; close() removes its spill files before it releases LOCK; a poisoned
buffer refuses reads; readers do not warn about a writer's transaction in flight; compact(keep=K) keeps K epochs;
temporary files of interrupted atomic writes are removed when a writer opens."""
import os
import threading
import warnings

import numpy as np
import pytest

import mmsb
from mmsb.errors import CorruptionError, HistoryError, LogPoisonedError, TornWriteWarning

pytestmark = pytest.mark.reliability


def _counter_store(root, n=30, seg=4096):
    with mmsb.open(root, "w", segment_bytes=seg) as buf:
        p = buf.create_page("c", 4, dtype="int64")
        for k in range(n):
            buf.write(p, 1, index=[k % 4], accumulate=True)
    return 1 + n


def test_compact_keep_k_keeps_k_epochs(tmp_path):
    """#16.9: after 30 writes, compact(keep=5) leaves the horizon at now-5 and at(now-5) .. at(now) work, at(now-6)
    raises HistoryError; negative keep is refused and changes nothing."""
    root = str(tmp_path / "s")
    now = _counter_store(root)
    with mmsb.open(root, "a") as buf:
        states = {e: buf.at(e)["c"].read() for e in range(1, now + 1)}
        with pytest.raises(HistoryError, match="keep"):
            buf.compact(keep=-5)
        assert buf.at(1)["c"].read().sum() == 0
        h = buf.compact(keep=5)
        assert h == now - 5
        for e in range(now - 5, now + 1):
            np.testing.assert_array_equal(buf.at(e)["c"].read(), states[e])
        with pytest.raises(HistoryError):
            buf.at(now - 6)
        e = buf.write("c", 1, index=[0], accumulate=True)
    assert mmsb.verify(root).ok
    with mmsb.open(root, "r") as buf:
        assert buf.epoch == e
        np.testing.assert_array_equal(buf.at(now - 5)["c"].read(), states[now - 5])


def test_close_removes_spill_files_before_releasing_the_lock(tmp_path, monkeypatch):
    """#16.4: a writer that opens in the instant after LOCK is released keeps its own spill files."""
    from mmsb import store as D

    root = str(tmp_path / "s")
    with mmsb.open(root, "w") as buf:
        for k in range(4):
            buf.create_page(f"p{k}", 20000)
            buf.write(f"p{k}", float(k))
    seen = {}
    real_close = D.Store.close

    def close(self):
        if self.writable and "spill" not in seen:
            hook = self.before_unlock
            self.before_unlock = None
            if hook is not None:
                hook()
            # the lock is still held here: a second writer is refused, and the spill directory is gone already
            with pytest.raises(mmsb.StoreLockedError if hasattr(mmsb, "StoreLockedError") else Exception):
                mmsb.open(root, "a")
            seen["spill"] = os.path.exists(os.path.join(root, "spill")) and os.listdir(os.path.join(root, "spill"))
        return real_close(self)

    monkeypatch.setattr(D.Store, "close", close)
    buf = mmsb.open(root, "a", memory_limit=200_000)
    for k in range(4):
        buf[f"p{k}"].read()
    assert os.listdir(os.path.join(root, "spill"))         # pages were spilled
    buf.close()
    assert not seen["spill"]
    monkeypatch.undo()
    # a writer opening right after close spills, and its files stay while it is open
    with mmsb.open(root, "a", memory_limit=200_000) as b2:
        for k in range(4):
            b2[f"p{k}"].read()
        files = os.listdir(os.path.join(root, "spill"))
        assert files
        for k in range(4):
            np.testing.assert_array_equal(b2[f"p{k}"].read(), np.full(20000, float(k)))


def test_reader_does_not_warn_about_a_transaction_in_flight(tmp_path):
    """#16.8: the writer's uncommitted records at the end of the log are not a torn tail for a reader while the
    writer holds LOCK; once no writer holds it, the same bytes are a torn tail (warned)."""
    from mmsb.delta import Delta, Txn

    root = str(tmp_path / "s")
    buf = mmsb.open(root, "w", durability="flush", auto_checkpoint=False)   # (no CHECKPOINT_MARK after the txn)
    buf.create_page("c", 4)
    e = buf.write("c", 1.0, index=[0])
    buf._log.append(Txn(e + 1, 999, [Delta("c", np.ones(4))]), commit=False)   # records of a txn in flight
    with warnings.catch_warnings():
        warnings.simplefilter("error", TornWriteWarning)
        with mmsb.open(root, "r") as rd:
            assert rd.epoch == e
    buf._log._fd, fd = None, buf._log._fd          # simulate the writer dying: the records stay, LOCK is freed
    buf._store.close()
    os.close(fd)
    with pytest.warns(TornWriteWarning):
        with mmsb.open(root, "r") as rd:
            assert rd.epoch == e


def test_poisoned_buffer_refuses_reads(tmp_path, monkeypatch):
    """#16.7: after a failed fsync inside sync() the commit is applied in memory but not durable: the buffer
    refuses to serve it (reads raise LogPoisonedError), and a reopen shows a committed state."""
    from mmsb.log import durable as LD

    root = str(tmp_path / "s")
    buf = mmsb.open(root, "w")
    buf.create_page("c", 4)
    buf.write("c", 1.0, index=[0])
    real = LD.os.fsync

    def boom(fd):
        raise OSError(5, "EIO (injected)")

    monkeypatch.setattr(LD.os, "fsync", boom)
    monkeypatch.setattr(LD, "_RWF_DSYNC", 0)
    buf._log._dsync = False
    with pytest.raises(LogPoisonedError):
        buf.write("c", 7.0, index=[1])
    assert buf._log.poisoned is not None
    with pytest.raises(LogPoisonedError, match="poisoned"):
        buf["c"].read()
    with pytest.raises(LogPoisonedError):
        buf.at(1)
    monkeypatch.setattr(LD.os, "fsync", real)
    try:
        buf.close()
    except OSError:
        pass
    with mmsb.open(root, "r") as rd:
        assert rd["c"].read()[0] == 1.0 and rd["c"].read()[1] in (0.0, 7.0)


def test_cleanup_temp_runs_when_a_writer_opens(tmp_path):
    """#14: temporary files of interrupted atomic writes are notes for verify and go when a writer opens."""
    root = str(tmp_path / "s")
    _counter_store(root, n=3)
    junk = [os.path.join(root, "checkpoints", ".00000000000000000002.ckpt.tmp-abcdef012345"),
            os.path.join(root, ".MANIFEST.tmp-abcdef012345"), os.path.join(root, ".STORE.tmp-abcdef012345")]
    os.makedirs(os.path.join(root, "checkpoints"), exist_ok=True)
    for p in junk:
        with open(p, "wb") as f:
            f.write(b"partial")
    rep = mmsb.verify(root)
    assert rep.ok and sum("temporary" in n for n in rep.notes) == 3, rep.notes
    with mmsb.open(root, "r"):
        pass
    assert all(os.path.exists(p) for p in junk)          # readers change nothing
    with mmsb.open(root, "a"):
        pass
    assert not any(os.path.exists(p) for p in junk)


def test_readers_beside_a_compacting_writer(tmp_path):
    """#16.3: a writer commits, checkpoints and compacts in a loop; reader threads open mode="r", read, call at()
    and log.query. A reader keeps what it opened: the only error allowed is HistoryError (history truly gone),
    never FileNotFoundError or a CorruptionError; every state read is one the writer committed (the counter sums
    to epoch - 1)."""
    root = str(tmp_path / "s")
    _counter_store(root, n=10, seg=2048)
    stop = threading.Event()
    errors, counts = [], {"opens": 0, "at": 0, "history": 0, "query": 0}

    def writer():
        try:
            with mmsb.open(root, "a", segment_bytes=2048) as buf:
                k = 0
                while not stop.is_set() and k < 400:
                    buf.write("c", 1, index=[k % 4], accumulate=True)
                    k += 1
                    if k % 7 == 0:
                        buf.compact(keep=3)
        except BaseException as exc:   # noqa: BLE001
            errors.append(("writer", exc))
        finally:
            stop.set()

    def reader():
        while not stop.is_set():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    buf = mmsb.open(root, "r")
            except BaseException as exc:   # noqa: BLE001
                errors.append(("open", exc))
                continue
            with buf:
                counts["opens"] += 1
                e = buf.epoch
                if buf["c"].read().sum() != e - 1:
                    errors.append(("state", e))
                for back in (1, 3, 8):
                    try:
                        v = buf.at(e - back)
                        counts["at"] += 1
                        if v["c"].read().sum() != e - back - 1:
                            errors.append(("at", e, back))
                    except HistoryError:
                        counts["history"] += 1
                    except BaseException as exc:   # noqa: BLE001
                        errors.append(("at", exc))
                try:
                    n = sum(1 for _ in buf.log.query(since=e - 3))
                    counts["query"] += 1
                    if n != 3:
                        errors.append(("query", e, n))
                except HistoryError:
                    counts["history"] += 1
                except BaseException as exc:   # noqa: BLE001
                    errors.append(("query", exc))

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors[:5]
    assert counts["opens"] > 5 and counts["at"] > 5, counts
    assert isinstance(CorruptionError, type)


def test_automatic_checkpoints(tmp_path, monkeypatch):
    """#16.11: with the policy on, a checkpoint is written once the log since the newest one outweighs the pages
    (background thread); each one equals the state at its epoch; reopen replays only the tail; off writes none;
    bad settings are refused."""
    from mmsb import store as D

    monkeypatch.setattr(D, "AUTO_CHECKPOINT_MIN_BYTES", 1)
    rng = np.random.default_rng(5)
    n = 2000
    for setting, expect_some in ((None, True), ("off", False), (2.0, True)):
        root = str(tmp_path / f"s{setting}")
        states = {}
        with mmsb.open(root, "w", durability="flush", auto_checkpoint=setting) as buf:
            p = buf.create_page("x", n)
            for k in range(60):
                e = buf.write(p, rng.random(200), index=rng.choice(n, 200, replace=False))
                states[e] = buf["x"].read()
            buf._store.wait_background()
            st = buf.stats()["store"]
            assert st["auto_checkpoint_error"] is None
        assert (st["auto_checkpoints"] > 0) == expect_some, st
        ckpts = st["checkpoints"]
        from mmsb import checkpoint as C

        for e in ckpts:
            snap = C.load_checkpoint(root, epoch=e)
            np.testing.assert_array_equal(dict((m["name"], a) for m, a in snap.pages)["x"], states[e])
        assert mmsb.verify(root).ok
        with mmsb.open(root, "r") as buf:
            np.testing.assert_array_equal(buf["x"].read(), states[max(states)])
            if ckpts:
                assert buf._log.lazy_segments >= 0 and buf._store.checkpoints == ckpts
    with pytest.raises(ValueError):
        mmsb.open(str(tmp_path / "bad"), "w", auto_checkpoint="sometimes")
    with pytest.raises(ValueError):
        mmsb.open(str(tmp_path / "bad2"), "w", auto_checkpoint=-1)

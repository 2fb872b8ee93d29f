"""Fault injection: fail the N-th write, fsync, rename or directory fsync (N = 1, 2, ...), or cut the power at the
N-th file operation (then drop, cut or garble every byte written after the last fsync). After each fault the
store must reopen to a state consistent with the acknowledged commits; a failed log write or fsync poisons the
buffer (LogPoisonedError on every later commit); a failed commit is either rolled back or poisons the log."""
import shutil
import warnings

import pytest

import mmsb
from mmsb.errors import LogPoisonedError, TornWriteWarning

import _workload as W
from _faultfs import KINDS, FaultFS, PowerLoss, abandon
from _figures import count

pytestmark = [pytest.mark.reliability, pytest.mark.long_slow]

SEED = 77
SEG = 1024


def _base(tmp_path, memory_limit=None):
    """A clean store after setup and a few commits (written with the real file layer)."""
    path = str(tmp_path / "base")
    with mmsb.open(path, "w", functions=W.FUNCS, segment_bytes=SEG) as buf:
        e0 = W.setup(buf)
        hist = {e0: W.initial_state()}
        for k in range(3):
            ops = W.gen_txn(SEED, 0, k)
            e = W.write_ops(buf, ops)
            hist[e] = W.apply_ops(hist[e - 1], ops)
        buf.checkpoint()
    return path, hist


def _workload(path, hist, memory_limit, box=None, steps=14):
    """Commits, checkpoints, a compaction and a spill-heavy memory limit, all under the fault layer.

    Returns the last acknowledged epoch (also kept in ``box["acked"]``, for a run cut by PowerLoss);
    ``hist`` gets the model of every attempted epoch."""
    box = {} if box is None else box
    acked = box["acked"] = max(hist)
    try:
        buf = mmsb.open(path, "a", functions=W.FUNCS, segment_bytes=SEG, memory_limit=memory_limit)
    except OSError:
        count("failed_opens")           # an open that fails acknowledges nothing; the store must still reopen
        return acked
    try:
        poisoned = False
        for k in range(steps):
            ops = W.gen_txn(SEED, 1, k)
            pre = buf.epoch
            hist[pre + 1] = W.apply_ops(hist[pre], ops)
            try:
                e = W.write_ops(buf, ops)
            except LogPoisonedError:
                poisoned = True
            except OSError as exc:
                # a commit that fails must be rolled back, or have poisoned the log
                if buf.epoch != pre:
                    assert buf.stats()["log"]["poisoned"], (
                        f"commit raised {exc!r} but epoch {buf.epoch} was applied and the log is not poisoned")
                    poisoned = True
                else:
                    poisoned = buf.stats()["log"]["poisoned"]
            else:
                assert e == pre + 1
                acked = box["acked"] = e
            if poisoned:
                # the poisoned buffer refuses reads: its state may hold a commit that never became durable
                for name in list(buf)[:1]:
                    with pytest.raises(LogPoisonedError, match="poisoned"):
                        buf[name].read()
                for j in range(2):      # every later commit is refused, with a clear error
                    pre = buf.epoch
                    with pytest.raises(LogPoisonedError, match="poisoned"):
                        W.write_ops(buf, W.gen_txn(SEED, 2, j))
                    assert buf.epoch == pre
                    count("poison_checks")
                break
            try:
                if k % 4 == 1:
                    buf.checkpoint()
                if k == 9:
                    buf.compact(keep=3)
            except LogPoisonedError:
                poisoned = True
            except OSError:
                pass                    # a failed checkpoint/compaction leaves the buffer usable
    except PowerLoss:
        abandon(buf)
        raise
    try:
        buf.close()
    except OSError:
        count("failed_closes")
    # even a close that fails (e.g. its final fsync) must release the writer lock
    assert buf._closed and buf._store._lock_fd is None, "close() left the store locked"
    return acked


@pytest.mark.parametrize("kind", KINDS)
def test_fail_during_store_creation(tmp_path, kind):
    """A store whose creation failed (or was cut) can be created again: crash leftovers never block open."""
    n = 0
    while True:
        n += 1
        path = str(tmp_path / f"c{n}")
        fs = FaultFS(fail_kind=kind, fail_n=n)
        with fs:
            try:
                with mmsb.open(path, "w", functions=W.FUNCS, segment_bytes=SEG) as buf:
                    W.setup(buf)
            except OSError:
                pass
        count("faults_injected", fs.injected)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TornWriteWarning)
            with mmsb.open(path, "a", functions=W.FUNCS, segment_bytes=SEG) as buf:
                pass
        if fs.injected == 0:
            break


def _check_reopen(path, hist, acked):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TornWriteWarning)
        buf = mmsb.open(path, "a", functions=W.FUNCS, segment_bytes=SEG)
    try:
        e = buf.epoch
        assert acked <= e <= max(hist), f"recovered epoch {e}, acknowledged {acked}, attempted {max(hist)}"
        d = W.diff(W.state_of(buf), W.full_state(hist[e]))
        assert not d, f"state at epoch {e} differs from the model on {d}"
        # and the recovered store keeps working
        ops = W.gen_txn(SEED, 3, 0)
        e2 = W.write_ops(buf, ops)
        assert not W.diff(W.state_of(buf), W.full_state(W.apply_ops(hist[e], ops)))
        assert e2 == e + 1
    finally:
        buf.close()
    rep = mmsb.verify(path)
    assert rep.ok, rep.problems


def _fail_each_nth(tmp_path, kind: str, LONG: bool, steps=None) -> None:
    """Fail the Nth operation of ``kind`` for N = 1, 2, ... until the workload no longer reaches one; after each
    run the store reopens to every acknowledged commit."""
    base, hist0 = _base(tmp_path)
    extra = {} if steps is None else {"steps": steps}
    n = 0
    while True:
        n += 1
        path = str(tmp_path / f"{kind}{n}")
        shutil.copytree(base, path)
        hist = dict(hist0)
        fs = FaultFS(fail_kind=kind, fail_n=n)
        with fs:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)     # "the shutdown checkpoint ... failed"
                acked = _workload(path, hist, memory_limit=300 if n % 2 else None, **extra)
        count("faults_injected", fs.injected)
        _check_reopen(path, hist, acked)
        shutil.rmtree(path)
        if fs.injected == 0:           # N is past the last operation of this kind: done
            break
        assert n < 5000
        if not LONG and n >= 8:        # CI: N = 1..8, then every 5th
            n += 4
    count("fault_runs", n)


@pytest.mark.parametrize("kind", KINDS)
def test_fail_nth_operation(tmp_path, kind, LONG):
    _fail_each_nth(tmp_path, kind, LONG)


@pytest.mark.parametrize("kind", KINDS)
def test_fail_nth_operation_with_shutdown_checkpoint(tmp_path, kind, LONG, monkeypatch):
    """The same faults while close() writes a shutdown checkpoint (incremental: it borrows the pages the last
    explicit checkpoint holds and that did not change). A fault there leaves the store as it was: close()
    completes and releases the lock, the next open replays the log."""
    from mmsb import store as D

    monkeypatch.setattr(D, "SHUTDOWN_CHECKPOINT_MIN_BYTES", 1)
    _fail_each_nth(tmp_path, kind, LONG, steps=15)


def test_power_loss(tmp_path, LONG):
    base, hist0 = _base(tmp_path)
    with FaultFS() as probe:
        _workload(shutil.copytree(base, str(tmp_path / "probe")), dict(hist0), memory_limit=300)
    total = probe.total
    points = range(1, total + 2) if LONG else sorted(set(list(range(1, total + 2, 5)) + [total, total + 1]))
    for i, at in enumerate(points):
        for how in (("drop", "garble", "partial") if LONG else (("drop", "garble", "partial")[i % 3],)):
            path = str(tmp_path / f"p{at}{how}")
            shutil.copytree(base, path)
            hist = dict(hist0)
            box = {}
            fs = FaultFS(crash_at=at, seed=at)
            with fs:
                try:
                    _workload(path, hist, memory_limit=300 if at % 2 else None, box=box)
                except PowerLoss:
                    pass
            lost = fs.power_cut(how)
            count("power_cuts")
            count("faults_injected", fs.injected)
            count("unsynced_bytes_lost_or_garbled", lost)
            _check_reopen(path, hist, box["acked"])
            shutil.rmtree(path)

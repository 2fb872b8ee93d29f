"""The durable log: round trips, recovery from torn tails, corruption detection, group commit, poisoning."""
import os
import threading
import warnings

import numpy as np
import pytest

from mmsb.delta import Delta, SchemaOp, Txn
from mmsb.errors import CorruptionError, LogPoisonedError, TornWriteWarning
from mmsb.log import DurableLog, MemoryLog, scan_store_log
from mmsb.log import durable as durable_log
from mmsb.log import records as R
from mmsb.log.segment import iter_segments

DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16",
          "float32", "float64", "complex64", "complex128"]


def make_txn(epoch, seed=0):
    rng = np.random.default_rng(seed + epoch)
    ops = []
    for k, dt in enumerate(DTYPES):
        vals = (rng.random(20) * 50).astype(dt)
        if k % 3 == 0:
            ops.append(Delta(f"p{k}", vals, index=np.sort(rng.integers(0, 1000, 20)), accumulate=True,
                             source="user", metadata={"k": k, "inf": float("inf"), "nan": float("nan")}))
        elif k % 3 == 1:
            m = rng.random(20) < 0.5
            ops.append(Delta(f"p{k}", vals, mask=m, derived=True))
        else:
            ops.append(Delta(f"p{k}", vals.reshape(4, 5)))
    ops.append(SchemaOp("page_created", {"name": "x", "shape": [3], "dtype": "<f8", "semiring": "min_plus",
                                         "device": "cpu", "metadata": {"inf": float("-inf")}},
                        {"fill": np.array([-np.inf])}))
    ops.append(SchemaOp("rule_added", {"kind": "link", "dst": "a", "srcs": ["x"]},
                        {"indptr": np.array([0, 1, 2]), "data": np.array([1.5, np.inf])}))
    return Txn(epoch=epoch, txid=1000 + epoch, ops=ops)


def same_op(a, b):
    assert type(a) is type(b)
    if isinstance(a, Delta):
        assert (a.page, a.accumulate, a.derived, a.source) == (b.page, b.accumulate, b.derived, b.source)
        np.testing.assert_array_equal(a.values, b.values)
        assert a.values.dtype == b.values.dtype and a.values.shape == b.values.shape
        for x, y in ((a.index, b.index), (a.mask, b.mask)):
            assert (x is None) == (y is None)
            if x is not None:
                np.testing.assert_array_equal(x, y)
        assert repr(a.metadata) == repr(b.metadata)
    else:
        assert a.kind == b.kind and repr(a.payload) == repr(b.payload)
        assert a.arrays.keys() == b.arrays.keys()
        for k in a.arrays:
            np.testing.assert_array_equal(a.arrays[k], b.arrays[k])


def same_txn(a, b):
    assert (a.epoch, a.txid, len(a.ops)) == (b.epoch, b.txid, len(b.ops))
    for x, y in zip(a.ops, b.ops):
        same_op(x, y)


def seg_path(root):
    return iter_segments(os.path.join(root, "log"))[-1][1]


def test_round_trip_every_dtype_and_schema(tmp_path):
    txns = [make_txn(e) for e in range(1, 6)]
    with DurableLog(tmp_path) as log:
        for t in txns:
            log.sync(log.append(t))
        assert log.last_epoch == 5
    with DurableLog(tmp_path) as log:
        got = list(log.txns())
        assert len(got) == 5
        for a, b in zip(got, txns):
            same_txn(a, b)
        assert [t.epoch for t in log.txns(since=2, until=4)] == [3, 4]
        assert all(d.epoch == t.epoch for t in got for d in t.deltas())
        st = log.stats()
        assert st["transactions"] == 5 and st["segments"] == 1


def test_epoch_order_enforced(tmp_path):
    with DurableLog(tmp_path) as log:
        log.append(make_txn(3))
        with pytest.raises(ValueError):
            log.append(make_txn(3))


def test_uncommitted_transactions_ignored(tmp_path):
    with DurableLog(tmp_path) as log:
        log.append(make_txn(1))
        log.append(make_txn(2), commit=False)
        log.append(make_txn(3))
        log.append(make_txn(4), commit=False)
    with pytest.warns(TornWriteWarning):   # the trailing uncommitted transaction is cut off
        log = DurableLog(tmp_path)
    assert [t.epoch for t in log.txns()] == [1, 3]
    log.append(make_txn(4))
    log.close()
    with DurableLog(tmp_path) as log:
        assert [t.epoch for t in log.txns()] == [1, 3, 4]


def test_torn_tail_every_offset(tmp_path):
    root = tmp_path / "s"
    small = [Txn(e, e, [Delta("p", np.arange(3.0) * e, index=np.array([0, 1, 5]))]) for e in (1, 2)]
    with DurableLog(root) as log:
        log.append(small[0])
        prev_end = os.path.getsize(seg_path(root))
        log.append(small[1])
    path = seg_path(root)
    data = open(path, "rb").read()
    for cut in range(prev_end, len(data)):
        with open(path, "wb") as f:
            f.write(data[:cut])
        if cut > prev_end:
            with pytest.warns(TornWriteWarning):
                log = DurableLog(root)
        else:
            log = DurableLog(root)
        assert [t.epoch for t in log.txns()] == [1], cut
        assert log.stats()["torn_tail_bytes"] == cut - prev_end
        log.close()
        assert os.path.getsize(path) == prev_end
    # readonly does not truncate
    with open(path, "wb") as f:
        f.write(data[:-3])
    with pytest.warns(TornWriteWarning):
        log = DurableLog(root, readonly=True)
    assert [t.epoch for t in log.txns()] == [1]
    log.close()
    assert os.path.getsize(path) == len(data) - 3


def test_flipped_bytes_detected(tmp_path):
    root = tmp_path / "s"
    with DurableLog(root) as log:
        for e in range(1, 4):
            log.append(Txn(e, e, [Delta("p", np.arange(50.0) * e), SchemaOp("rule_added", {"a": e})]))
    path = seg_path(root)
    data = open(path, "rb").read()
    rng = np.random.default_rng(7)
    positions = sorted(set(rng.integers(0, len(data), 200).tolist()) | {0, 8, 20, 43, 44, len(data) - 1})
    from mmsb.verification import verify
    for pos in positions:
        b = bytearray(data)
        b[pos] ^= 1 << int(rng.integers(0, 8))
        with open(path, "wb") as f:
            f.write(b)
        rep = verify(root)
        assert not rep.ok, pos
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                log = DurableLog(root, readonly=True)
            except CorruptionError as exc:
                assert exc.file == path
                continue
        # accepted only as a torn tail of the last transaction: never a wrong transaction
        got = [t.epoch for t in log.txns()]
        assert got in ([1, 2], [1, 2, 3][:len(got)]), pos
        assert rep.torn_tail
        log.close()


def test_recovery_truncate(tmp_path):
    root = tmp_path / "s"
    with DurableLog(root) as log:
        for e in range(1, 5):
            log.append(Txn(e, e, [Delta("p", np.arange(50.0) * e)]))
        ends = [e.end for e in log._index]
    path = seg_path(root)
    b = bytearray(open(path, "rb").read())
    b[ends[1] + 40] ^= 0xFF   # inside transaction 3
    open(path, "wb").write(b)
    with pytest.raises(CorruptionError) as ei:
        DurableLog(root)
    assert ei.value.offset is not None
    with DurableLog(root, recovery="truncate") as log:
        assert [t.epoch for t in log.txns()] == [1, 2]
        log.append(Txn(3, 9, [Delta("p", np.zeros(2))]))
    with DurableLog(root) as log:
        assert [t.epoch for t in log.txns()] == [1, 2, 3]


def test_segments_roll_and_drop(tmp_path):
    with DurableLog(tmp_path, segment_bytes=2000) as log:
        for e in range(1, 21):
            log.append(Txn(e, e, [Delta("p", np.random.default_rng(e).random(64))]))
        n = log.stats()["segments"]
        assert n > 3
        names = [os.path.basename(p) for _, p in iter_segments(os.path.join(tmp_path, "log"))]
        assert names[0] == f"{1:020d}.seg"
        dropped = log.drop_segments_before(10)
        assert dropped >= 1
        assert log.first_epoch <= 11
        assert [t.epoch for t in log.txns()][-1] == 20
    with DurableLog(tmp_path) as log:
        eps = [t.epoch for t in log.txns()]
        assert eps == list(range(eps[0], 21)) and eps[0] <= 11
        log.append(Txn(21, 21, []))
    assert all(not i["problems"] for i in scan_store_log(str(tmp_path)))


def test_group_commit(tmp_path):
    log = DurableLog(tmp_path, durability="fsync")
    lock = threading.Lock()
    counter = [0]

    def worker():
        for _ in range(25):
            with lock:
                counter[0] += 1
                tok = log.append(Txn(counter[0], counter[0], [Delta("p", np.ones(2048))]))
            log.sync(tok)

    ths = [threading.Thread(target=worker) for _ in range(8)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    st = log.stats()
    log.close()
    assert st["transactions"] == 200
    assert st["group_commit_batches"] < 200
    with DurableLog(tmp_path) as log:
        assert len(list(log.txns())) == 200


def test_poison_on_failed_fsync(tmp_path, monkeypatch):
    log = DurableLog(tmp_path)
    log.sync(log.append(Txn(1, 1, [Delta("p", np.ones(3))])))
    log._dsync = False                    # the group-commit path: append, then one fsync in sync()

    def bad_fsync(fd):
        raise OSError(5, "EIO")

    monkeypatch.setattr(os, "fsync", bad_fsync)
    tok = log.append(Txn(2, 2, [Delta("p", np.ones(3))]))
    with pytest.raises(LogPoisonedError):
        log.sync(tok)
    monkeypatch.undo()
    with pytest.raises(LogPoisonedError):
        log.append(Txn(3, 3, [Delta("p", np.ones(3))]))
    with pytest.raises(LogPoisonedError):
        log.sync()
    assert log.stats()["poisoned"]
    log.close()


DSYNC = pytest.mark.skipif(not durable_log._RWF_DSYNC, reason="no pwritev2 with RWF_DSYNC here")


def _commit_alone(log, epoch):
    log.sync(log.append(Txn(epoch, epoch, [Delta("p", np.full(4, float(epoch)))])))


WARM = durable_log._DSYNC_AFTER + 2       # commits from one thread before it writes durably in one call


def _warm(log):
    for e in range(1, WARM + 1):
        _commit_alone(log, e)


@DSYNC
def test_lone_committer_writes_durably_in_one_call(tmp_path, monkeypatch):
    log = DurableLog(tmp_path)
    _warm(log)
    calls = []
    real = os.pwritev

    def spy(fd, bufs, offset, flags=0):
        calls.append(flags)
        return real(fd, bufs, offset, flags)

    monkeypatch.setattr(os, "pwritev", spy)
    monkeypatch.setattr(os, "fsync", lambda fd: pytest.fail("a lone commit needs no separate fsync"))
    st0 = log.stats()
    for e in range(WARM + 1, WARM + 11):
        _commit_alone(log, e)
    st = log.stats()
    assert calls == [os.RWF_DSYNC] * 10
    assert st["fsyncs"] - st0["fsyncs"] == 10 and st["group_commit_batches"] == st0["group_commit_batches"]
    assert st["synced_commits"] - st0["synced_commits"] == 10
    monkeypatch.undo()
    log.close()
    with DurableLog(tmp_path) as again:
        assert again.last_epoch == WARM + 10
        assert [t.epoch for t in again.txns()] == list(range(1, WARM + 11))


@DSYNC
def test_commits_from_several_threads_keep_group_commit(tmp_path, monkeypatch):
    log = DurableLog(tmp_path)
    _warm(log)
    monkeypatch.setattr(os, "pwritev", lambda *a: pytest.fail("another thread committed lately"))
    epoch = [WARM]

    def one():
        epoch[0] += 1
        _commit_alone(log, epoch[0])

    for _ in range(3):                    # alternate threads: never alone for long enough
        t = threading.Thread(target=one)
        t.start()
        t.join()
        one()
    log.close()


@DSYNC
def test_overlapping_appends_use_group_commit(tmp_path, monkeypatch):
    log = DurableLog(tmp_path)
    _warm(log)
    monkeypatch.setattr(os, "pwritev", lambda *a: pytest.fail("another append is in flight: no durable write"))
    with log._count_lock:
        log._appending += 1               # as if a second committer were waiting for the lock
    try:
        b0 = log.stats()["group_commit_batches"]
        _commit_alone(log, WARM + 1)
        assert log.stats()["group_commit_batches"] == b0 + 1
    finally:
        with log._count_lock:
            log._appending -= 1
    log.close()


@DSYNC
def test_durable_write_refused_falls_back(tmp_path, monkeypatch):
    import errno

    log = DurableLog(tmp_path)
    _warm(log)

    def refuse(*a):
        raise OSError(errno.EOPNOTSUPP, "not supported")

    monkeypatch.setattr(os, "pwritev", refuse)
    _commit_alone(log, WARM + 1)          # written with writev + fsync instead, and not tried again
    assert log._dsync is False
    _commit_alone(log, WARM + 2)
    monkeypatch.undo()
    log.close()
    with DurableLog(tmp_path) as again:
        assert again.last_epoch == WARM + 2


@DSYNC
def test_poison_on_failed_durable_write(tmp_path, monkeypatch):
    log = DurableLog(tmp_path)
    _warm(log)

    def eio(*a):
        raise OSError(5, "EIO")

    monkeypatch.setattr(os, "pwritev", eio)
    with pytest.raises(LogPoisonedError):
        log.append(Txn(WARM + 1, WARM + 1, [Delta("p", np.ones(4))]))
    monkeypatch.undo()
    with pytest.raises(LogPoisonedError):
        log.append(Txn(WARM + 2, WARM + 2, [Delta("p", np.ones(4))]))
    log.close()
    with DurableLog(tmp_path) as again:
        assert again.last_epoch == WARM


def test_poison_on_failed_write(tmp_path, monkeypatch):
    log = DurableLog(tmp_path, durability="flush")
    log.append(Txn(1, 1, []))

    def bad_write(fd, data):
        raise OSError(28, "ENOSPC")

    monkeypatch.setattr(os, "write", bad_write)
    monkeypatch.setattr(os, "writev", bad_write)
    with pytest.raises(LogPoisonedError):
        log.append(Txn(2, 2, [Delta("p", np.ones(3))]))
    monkeypatch.undo()
    with pytest.raises(LogPoisonedError):
        log.append(Txn(3, 3, []))
    log.close()


@pytest.mark.parametrize("durability", ["flush", "none"])
def test_other_durabilities(tmp_path, durability):
    with DurableLog(tmp_path, durability=durability) as log:
        for e in range(1, 30):
            log.sync(log.append(make_txn(e)))
        assert len(list(log.txns(since=25))) == 4
        assert log.stats()["fsyncs"] <= 1
    with DurableLog(tmp_path) as log:
        assert log.last_epoch == 29


def test_sync_needed_only_where_sync_does_something(tmp_path, monkeypatch):
    """``sync_needed`` is True only for a writable fsync log: elsewhere ``sync`` syncs nothing (a committer may
    skip it), and a failed append has already raised and poisoned the log."""
    assert MemoryLog().sync_needed is False
    for durability in ("fsync", "flush", "none"):
        with DurableLog(tmp_path / durability, durability=durability) as log:
            assert log.sync_needed is (durability == "fsync")
            log.append(Txn(1, 1, []))                  # (creates the segment: its directory is synced)
            if durability != "fsync":
                monkeypatch.setattr(os, "fsync", lambda fd: pytest.fail("sync has nothing to do"))
                log.sync(log.append(Txn(2, 2, [])))
                monkeypatch.undo()
        if durability == "fsync":
            with DurableLog(tmp_path / durability, readonly=True) as reader:
                assert reader.sync_needed is False


def test_checkpoint_mark_and_abort(tmp_path):
    with DurableLog(tmp_path) as log:
        log.append(make_txn(1))
        log.mark_checkpoint(1)
        log.append(make_txn(2), commit=False)
        log.append_abort(2, 1002)
        log.append(make_txn(3))
    with DurableLog(tmp_path) as log:
        assert [t.epoch for t in log.txns()] == [1, 3]
        assert log.checkpoint_marks == [1]


def test_memory_log():
    log = MemoryLog()
    for e in range(1, 6):
        log.sync(log.append(make_txn(e)))
    assert [t.epoch for t in log.txns(since=1, until=3)] == [2, 3]
    assert log.last_epoch == 5
    assert log.drop_segments_before(2) == 2
    assert [t.epoch for t in log.txns()] == [3, 4, 5]
    assert log.stats()["transactions"] == 5
    log.close()


def test_records_fuzz_raise_only_corruption():
    from hypothesis import given, settings, strategies as st

    payload = R.encode_delta(make_txn(1).ops[1])[0]
    spay = R.encode_schema(make_txn(1).ops[-1])[0]

    @settings(max_examples=300, deadline=None)
    @given(st.data())
    def run(data):
        base = bytearray(data.draw(st.sampled_from([payload, spay])))
        for _ in range(data.draw(st.integers(1, 3))):
            i = data.draw(st.integers(0, len(base) - 1))
            base[i] = data.draw(st.integers(0, 255))
        if data.draw(st.booleans()):
            base = base[:data.draw(st.integers(0, len(base)))]
        for fn in (R.decode_delta, R.decode_schema):
            try:
                fn(bytes(base))
            except CorruptionError:
                pass

    run()


@pytest.mark.parametrize("durability", ["fsync", "flush"])
def test_short_gathered_writes_are_resumed(tmp_path, monkeypatch, durability):
    """The OS may take part of a gathered write (at most 1000 bytes here, splitting buffers mid-way): the log
    writes the rest in order and the records read back whole."""
    real = os.writev
    calls = []

    def first_1000_bytes(buffers):
        out, room = [], 1000
        for b in buffers:
            mv = memoryview(b).cast("B")
            out.append(mv[:room])
            room -= len(out[-1])
            if not room:
                break
        calls.append(len(out))
        return out

    def short_writev(fd, buffers):
        return real(fd, first_1000_bytes(buffers))

    real_p = os.pwritev
    durable_calls = []

    def short_pwritev(fd, buffers, offset, flags=0):      # the lone committer's durable write (fsync mode)
        durable_calls.append(flags)
        return real_p(fd, first_1000_bytes(buffers), offset, flags)

    monkeypatch.setattr(os, "writev", short_writev)
    monkeypatch.setattr(os, "pwritev", short_pwritev)
    rng = np.random.default_rng(3)
    txns = [Txn(e, e, [Delta("p", rng.random(700 + 37 * e), index=np.arange(700 + 37 * e)),
                       Delta("q", rng.random(5))]) for e in range(1, WARM + 6)]   # the last ones: RWF_DSYNC
    with DurableLog(tmp_path, durability=durability) as log:
        for t in txns:
            log.sync(log.append(t))
    monkeypatch.undo()
    assert len(calls) > 5 * 6
    with DurableLog(tmp_path) as log:
        got = list(log.txns())
    assert [t.epoch for t in got] == list(range(1, WARM + 6))
    assert bool(durable_calls) == (durability == "fsync" and bool(durable_log._RWF_DSYNC))
    for want, have in zip(txns, got):
        for a, b in zip(want.ops, have.ops):
            np.testing.assert_array_equal(a.values, b.values)
            np.testing.assert_array_equal(a.index, b.index)


def test_whole_page_record_head_cache_gives_the_same_bytes():
    """Whole-page deltas reuse the record bytes before their values (name, flags, mask) per page: the payload is
    byte for byte what a delta with its own all-True mask encodes to, and decodes back."""
    from mmsb.delta import full_mask

    rng = np.random.default_rng(11)
    for dt in ("float64", "int16", "bool"):
        for k in range(3):                    # first call fills the cache, later ones hit it
            v = (rng.random(300) * 100).astype(dt)
            shared = Delta("page-é", v, mask=full_mask(300), accumulate=bool(k % 2))
            own = Delta("page-é", v, mask=np.ones(300, bool), accumulate=bool(k % 2))
            a, ra, ea = R.encode_delta(shared)
            b, rb, eb = R.encode_delta(own)
            assert a == b and (ra, ea) == (rb, eb)
            back = R.decode_delta(a)
            np.testing.assert_array_equal(back.values, v)
            assert back.mask.all() and back.accumulate == bool(k % 2)
    d = Delta("p", np.ones(300), mask=full_mask(300), source="sensor", metadata={"k": 1})
    e = Delta("p", np.ones(300), mask=np.ones(300, bool), source="sensor", metadata={"k": 1})
    assert R.encode_delta(d)[0] == R.encode_delta(e)[0]

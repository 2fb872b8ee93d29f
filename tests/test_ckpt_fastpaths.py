"""The fast paths of checkpoint write and reopen: probe-rejected (raw) chunks, loading straight into allocator
blocks (all checks before any page exists), and segments wholly before the checkpoint left unread at open
(indexed lazily for time travel, queries, stats and compaction; always checked by verify)."""
import json
import os
import struct
import warnings

import numpy as np
import pytest

import mmsb
from mmsb import checkpoint as C
from mmsb import codecs
from mmsb import container as K
from mmsb.errors import CorruptionError
from mmsb.log import iter_segments
from mmsb.memory import MemoryManager

N = 300_000           # 2.4 MB of float64: above the probe's minimum size


def _manifest(path):
    with open(path, "rb") as f:
        data = f.read()
    moff, mlen = struct.unpack_from("<QQ", data, len(data) - K.TRAIL_SIZE)
    return json.loads(data[moff:moff + mlen])


def _arrays():
    rng = np.random.default_rng(3)
    x = np.linspace(0.0, 50.0, N)
    return {"rand": rng.random(N),                                 # incompressible: probe rejects it
            "smooth": np.round(np.sin(x) * 100.0 * 1024) / 1024,   # compressible
            "mixed": np.concatenate([np.zeros(N // 2), rng.random(N - N // 2)]),
            "ints": rng.integers(-5, 5, N).astype(np.int16),
            "flags": rng.random(N) < 0.5}


def test_probe_rejected_and_compressed_chunks_round_trip(tmp_path):
    arrs = _arrays()
    ps = [({"name": k}, v) for k, v in arrs.items()]
    path = C.write_checkpoint(str(tmp_path), 7, ps, [])
    man = _manifest(path)
    codec_of = {p["meta"]["name"]: {c["codec"] for c in p["chunks"]} for p in man["pages"]}
    assert codec_of["rand"] == {codecs.RAW}            # rejected by the probe: stored raw
    assert codec_of["smooth"] == {codecs.BLOSC2}
    snap = C.load_checkpoint(str(tmp_path))
    for (meta, got), (k, v) in zip(snap.pages, arrs.items()):
        assert meta["name"] == k and got.dtype == v.dtype
        np.testing.assert_array_equal(got, v)
    assert C.verify_checkpoint(path)["pages"] == len(arrs)   # SHA-256 of every chunk, too


@pytest.mark.parametrize("mode,cpus,want", [("on", 2, True), ("off", 8, False), ("auto", 2, False),
                                           ("auto", 4, True)])
def test_compression_policy(monkeypatch, mode, cpus, want):
    monkeypatch.setattr(C, "CHECKPOINT_COMPRESS", mode)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    assert C.checkpoint_compression() is want


def test_store_checkpoints_compress_by_default(tmp_path):
    """The default policy compresses compressible pages (and stores random ones raw); compress=False writes raw."""
    arrs = _arrays()
    with mmsb.open(str(tmp_path / "s"), mode="w", durability="flush") as buf:
        for k in ("rand", "smooth"):
            buf.write(buf.create_page(k, N), arrs[k])
        e1 = buf.checkpoint()
        buf.write("smooth", 1.0, index=[0])
        e2 = buf.checkpoint(compress=False)
    codecs_at = {}
    for e in (e1, e2):
        man = _manifest(C.checkpoint_path(str(tmp_path / "s"), e))
        codecs_at[e] = {p["meta"]["name"]: {c["codec"] for c in p["chunks"]} for p in man["pages"]}
    assert codecs_at[e1] == {"rand": {codecs.RAW}, "smooth": {codecs.BLOSC2}}
    assert codecs_at[e2] == {"rand": {codecs.RAW}, "smooth": {codecs.RAW}}
    with mmsb.open(str(tmp_path / "s"), mode="r") as ro:
        np.testing.assert_array_equal(ro["rand"].read(), arrs["rand"])
        want = arrs["smooth"].copy()
        want[0] = 1.0
        np.testing.assert_array_equal(ro["smooth"].read(), want)


def test_raw_probe_returns_memory_not_copy():
    a = np.random.default_rng(1).random(N)
    cid, data = codecs.encode_values(a, max_fraction=0.8, view=True)
    assert cid == codecs.RAW and isinstance(data, memoryview) and data.readonly
    assert np.shares_memory(np.frombuffer(data, dtype=a.dtype), a)
    cid2, data2 = codecs.encode_values(a, max_fraction=0.8)
    assert cid2 == codecs.RAW and bytes(data2) == bytes(data)


def test_many_chunks_per_page_and_load_into_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(K, "CHUNK_BYTES", 1 << 20)      # several chunks per page, several per worker
    monkeypatch.setattr(K, "READ_PIECE", 100_000)       # pieces that do not divide a chunk
    arrs = _arrays()
    C.write_checkpoint(str(tmp_path), 3, [({"name": k}, v) for k, v in arrs.items()], [])
    mm = MemoryManager(None, None)
    loader = mm.block_loader()
    snap = C.load_checkpoint(str(tmp_path), blocks=loader)
    assert snap.blocks is loader
    for (meta, got), v in zip(snap.pages, arrs.values()):
        np.testing.assert_array_equal(got, v)
        assert loader.take(got) is not None              # every page array is an allocator block
    st = mm.allocator.stats()
    assert st["bytes_in_use"] >= sum(v.nbytes for v in arrs.values())


@pytest.mark.parametrize("where", ["raw", "compressed", "manifest"])
def test_corrupt_chunk_fails_open_before_any_page_exists(tmp_path, where):
    root = str(tmp_path / "s")
    arrs = _arrays()
    with mmsb.open(root, "w") as buf:
        for k, v in arrs.items():
            p = buf.create_page(k, v.shape, dtype=v.dtype)
            buf.write(p, v)
        buf.checkpoint()
    path = C.checkpoint_path(root, C.list_checkpoints(root)[-1])
    man = _manifest(path)
    byname = {p["meta"]["name"]: p for p in man["pages"]}
    if where == "raw":
        off = byname["rand"]["chunks"][0]["offset"] + 12345
    elif where == "compressed":
        off = byname["smooth"]["chunks"][0]["offset"] + byname["smooth"]["chunks"][0]["length"] // 2
    else:
        off = man["data_end"] + 10
    with open(path, "r+b") as f:
        f.seek(off)
        b = f.read(1)[0]
        f.seek(off)
        f.write(bytes([b ^ 0x40]))
    # through the loader: a failure frees every block it handed out
    mm = MemoryManager(None, None)
    with pytest.raises(CorruptionError):
        C.load_checkpoint(root, blocks=mm.block_loader())
    assert mm.allocator.stats()["bytes_in_use"] == 0
    for mode in ("r", "a"):
        # a corrupt (newest) checkpoint: open falls back to an older one, here none, so the whole log replays
        with pytest.warns(RuntimeWarning, match="falling back") as rec:
            with mmsb.open(root, mode) as buf:
                for k, v in arrs.items():
                    np.testing.assert_array_equal(buf[k].read(), v)
        # the warning names the checkpoint's file (a reader reads through a pinned descriptor: not /proc/self/fd)
        msgs = [str(x.message) for x in rec if "falling back" in str(x.message)]
        assert msgs and all(path in m and "/proc/" not in m for m in msgs), msgs
    assert not mmsb.verify(root).ok
    # the store is not locked or half-open after the failed open: a repaired file opens normally
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(bytes([b]))
    with mmsb.open(root, "r") as buf:
        for k, v in arrs.items():
            np.testing.assert_array_equal(buf[k].read(), v)


def _history(root, seg_bytes=4000):
    """Many small segments, a checkpoint in the middle, a tail after it; returns {epoch: state}."""
    rng = np.random.default_rng(9)
    states = {}
    with mmsb.open(root, "w", segment_bytes=seg_bytes) as buf:
        p = buf.create_page("p", 200)
        q = buf.create_page("q", 50, dtype="int64", semiring="min_plus", fill=100)
        for k in range(40):
            buf.write(p, rng.random(200))
            e = buf.write(q, rng.integers(0, 100, 5), index=rng.integers(0, 50, 5), accumulate=True)
            states[e - 1] = None
            states[e] = (p.read(), q.read())
            if k == 29:
                buf.checkpoint()
                ck = buf.epoch
    for e in [e for e, s in states.items() if s is None]:
        del states[e]
    return states, ck


def _state_at(buf):
    return buf["p"].read(), buf["q"].read()


def test_reopen_leaves_old_segments_unread_but_history_works(tmp_path):
    root = str(tmp_path / "s")
    states, ck = _history(root)
    segs = iter_segments(os.path.join(root, "log"))
    assert len(segs) > 5
    final = states[max(states)]
    with mmsb.open(root, "r") as buf:
        log = buf._log
        assert log.lazy_segments >= 3                 # wholly before the checkpoint: not read at open
        assert buf.epoch == max(states)
        for a, b in zip(_state_at(buf), final):
            np.testing.assert_array_equal(a, b)
        # queries after the checkpoint need no old segment
        n_after = sum(1 for _ in buf.log.query("q", since=ck))
        assert n_after == 10 and log.lazy_segments >= 3
        # time travel before the checkpoint indexes them (lazily, once)
        for e in sorted(states)[::7]:
            v = buf.at(e)
            for a, b in zip(_state_at(v), states[e]):
                np.testing.assert_array_equal(a, b)
        assert log.lazy_segments == 0
        assert sum(1 for _ in buf.log.query("q")) == 40
        assert buf.log.stats()["transactions"] == len(log._epochs)
    with mmsb.open(root, "r") as buf:
        assert sum(1 for _ in buf.log.query("p", until=5)) >= 1     # a query into old epochs indexes too
        assert buf._log.lazy_segments == 0
    with mmsb.open(root, "r") as buf:
        st = buf.log.stats()                       # stats are complete (they index what was skipped)
        assert st["transactions"] == max(states)
        assert buf._log.first_epoch == 1
    assert mmsb.verify(root).ok


def test_writer_appends_and_compacts_after_lazy_open(tmp_path):
    root = str(tmp_path / "s")
    states, ck = _history(root)
    with mmsb.open(root, "a") as buf:
        assert buf._log.lazy_segments >= 3
        e = buf.write("p", np.ones(200))
        assert e == max(states) + 1
        buf.compact(keep=3)
        assert buf._log.lazy_segments == 0
        np.testing.assert_array_equal(buf.at(e - 1)["q"].read(), states[e - 1][1])
        with pytest.raises(mmsb.errors.HistoryError):
            buf.at(5)
    with mmsb.open(root, "r") as buf:
        np.testing.assert_array_equal(buf["p"].read(), np.ones(200))
        assert buf.epoch == e
    assert mmsb.verify(root).ok


def test_corruption_in_unread_segment_found_by_verify_and_on_use(tmp_path):
    root = str(tmp_path / "s")
    states, ck = _history(root)
    first = iter_segments(os.path.join(root, "log"))[0][1]
    size = os.path.getsize(first)
    with open(first, "r+b") as f:            # a payload byte in the middle of the first segment
        f.seek(size // 2)
        b = f.read(1)[0]
        f.seek(size // 2)
        f.write(bytes([b ^ 0x01]))
    rep = mmsb.verify(root)
    assert not rep.ok and any(os.path.basename(first) in p for p in rep.problems)
    with mmsb.open(root, "r") as buf:        # nothing in that segment is replayed: the state is right
        for a, b2 in zip(_state_at(buf), states[max(states)]):
            np.testing.assert_array_equal(a, b2)
        with pytest.raises(CorruptionError) as ei:
            buf.at(2)
        assert ei.value.file == first
        with pytest.raises(CorruptionError):
            list(buf.log.query())
    with pytest.raises(CorruptionError):     # strict full scans (no checkpoint to skip to) still raise
        from mmsb.log import DurableLog
        DurableLog(root, readonly=True)


def test_corruption_in_replayed_segment_still_raises_on_open(tmp_path):
    root = str(tmp_path / "s")
    states, ck = _history(root)
    segs = iter_segments(os.path.join(root, "log"))
    # a segment holding epochs after the checkpoint, not the last one (so not a torn tail)
    after = [p for i, (base, p) in enumerate(segs[:-1]) if segs[i + 1][0] > ck + 1 and base > ck]
    assert after
    victim = after[0]
    size = os.path.getsize(victim)
    with open(victim, "r+b") as f:
        f.seek(size // 2)
        b = f.read(1)[0]
        f.seek(size // 2)
        f.write(bytes([b ^ 0x01]))
    with pytest.raises(CorruptionError) as ei:
        mmsb.open(root, "r")
    assert ei.value.file == victim
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mmsb.open(root, "a", recovery="truncate") as buf:   # recovery mode scans everything
            assert buf.epoch in states and buf.epoch >= ck
            for a, b2 in zip(_state_at(buf), states[buf.epoch]):
                np.testing.assert_array_equal(a, b2)


def test_memory_limit_open_still_loads(tmp_path):
    root = str(tmp_path / "s")
    states, ck = _history(root)
    with mmsb.open(root, "r", memory_limit=2000) as buf:     # no block loader under a limit: pages spill
        for a, b in zip(_state_at(buf), states[max(states)]):
            np.testing.assert_array_equal(a, b)


def _one_segment_store(root):
    states = {}
    with mmsb.open(root, "w") as buf:
        p = buf.create_page("p", 300)
        for k in range(8):
            e = buf.write(p, np.full(300, float(k)))
            states[e] = np.full(300, float(k))
            if k == 4:
                buf.checkpoint()
                ck = e
    return states, ck


def test_last_segment_records_before_checkpoint_are_not_read_but_checked_on_use(tmp_path):
    root = str(tmp_path / "s")
    states, ck = _one_segment_store(root)
    seg = iter_segments(os.path.join(root, "log"))[0][1]
    with mmsb.open(root, "r") as buf:
        log = buf._log
        first = log._index[0]           # create_page, then the writes; the second entry is epoch 2's write
        e2 = log._index[1]
    off = e2.start + 25 + 100           # inside the payload of epoch 2 (before the checkpoint)
    with open(seg, "r+b") as f:
        f.seek(off)
        b = f.read(1)[0]
        f.seek(off)
        f.write(bytes([b ^ 0x10]))
    assert not mmsb.verify(root).ok
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # no torn-tail warning: nothing was cut
        buf = mmsb.open(root, "r")
    with buf:
        np.testing.assert_array_equal(buf["p"].read(), states[max(states)])
        with pytest.raises(CorruptionError):
            buf.at(2)
        np.testing.assert_array_equal(buf.at(ck + 1)["p"].read(), states[ck + 1])   # after the damage: fine
    assert first.epoch == 1


def test_torn_tail_after_checkpoint_still_repaired(tmp_path):
    root = str(tmp_path / "s")
    states, ck = _one_segment_store(root)
    seg = iter_segments(os.path.join(root, "log"))[0][1]
    with mmsb.open(root, "r") as buf:
        last = buf._log._index[-1]
    size = os.path.getsize(seg)
    for cut in (last.start + 3, last.start + 30, (last.start + last.end) // 2, last.end - 1):
        path = str(tmp_path / f"c{cut}")
        import shutil
        shutil.copytree(root, path)
        with open(os.path.join(path, "log", os.path.basename(seg)), "r+b") as f:
            f.truncate(cut)
        with pytest.warns(mmsb.errors.TornWriteWarning):
            buf = mmsb.open(path, "a")
        with buf:
            assert buf.epoch == max(states) - 1
            np.testing.assert_array_equal(buf["p"].read(), states[max(states) - 1])
            buf.write("p", np.zeros(300))
        assert mmsb.verify(path).ok
    # a flipped byte in a committed record after the checkpoint (not the last record) is corruption, not torn
    before_last = None
    with mmsb.open(root, "r") as buf:
        before_last = buf._log._index[-2]
    assert before_last.epoch > ck
    with open(seg, "r+b") as f:
        f.seek(before_last.start + 40)
        b = f.read(1)[0]
        f.seek(before_last.start + 40)
        f.write(bytes([b ^ 0x01]))
    with pytest.raises(CorruptionError):
        mmsb.open(root, "r")
    assert size == os.path.getsize(seg)


def test_stats_reads_skipped_segments_without_holding_the_log_lock(tmp_path, monkeypatch):
    """buf.stats() after a lazy reopen reads the skipped segments with the log's lock free (a committer is never
    stuck behind that I/O), and the figures are complete afterwards."""
    import threading

    from mmsb.log import segment as seg_mod

    root = str(tmp_path / "s")
    states, ck = _history(root)
    with mmsb.open(root, "a") as buf:
        log = buf._log
        assert log.lazy_segments > 0
        free_during_scan = []
        real = seg_mod.read_segment

        def try_lock(got):
            ok = log._lock.acquire(timeout=5)
            if ok:
                log._lock.release()
            got.append(ok)

        def probe(path, *a, **k):
            got = []
            t = threading.Thread(target=try_lock, args=(got,))
            t.start()
            t.join()
            free_during_scan.append(got[0])
            return real(path, *a, **k)

        monkeypatch.setattr(seg_mod, "read_segment", probe)
        st = buf.stats()["log"]
        monkeypatch.undo()
        assert free_during_scan and all(free_during_scan)
        assert log.lazy_segments == 0
        assert st["transactions"] == len(log._epochs) and st["first_epoch"] == min(log._epochs)
        e = buf.write("p", 1.0, index=[0])                    # the writer carries on
        assert buf.log.stats()["last_epoch"] == e

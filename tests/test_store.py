"""Stores: reopen equals the state before close, modes, the writer lock, readers, replay, compaction, torn tails
and corruption detection. Every expected state comes from an independent numpy model."""
import os
import shutil
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import mmsb
from mmsb import semirings
from mmsb.errors import (CorruptionError, HistoryError, MMSBError, ReadOnlyError, StoreLockedError,
                         TornWriteWarning)
from mmsb.log.segment import iter_segments

BUILTINS = ["plus_times", "min_plus", "max_plus", "max_times", "max_min", "min_max", "or_and"]
DTYPES = ["float64", "float32", "int64", "int32", "uint8", "bool"]

NP_ADD = {"plus_times": np.add, "min_plus": np.minimum, "max_plus": np.maximum, "max_times": np.maximum,
          "max_min": np.maximum, "min_max": np.minimum, "or_and": np.logical_or}


def model_acc(arr, idx, vals, sr):
    """page[idx] = page[idx] (+) vals with duplicates (+)-combined, in numpy."""
    op = NP_ADD[sr]
    for i, v in zip(np.asarray(idx).tolist(), np.asarray(vals).tolist()):
        arr[i] = op(arr[i], v)


def rand_values(rng, dtype, n, sr):
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.random(n) < 0.5
    if dt.kind in "iu":
        return rng.integers(0, 20, n).astype(dt)
    v = rng.integers(-50, 50, n).astype(dt) / 4
    if sr == "max_times":
        v = np.abs(v)
    return v


def supported(sr, dt):
    try:
        semirings.get(sr).check_dtype(dt)
        return True
    except MMSBError:
        return False


def state(buf):
    return {n: buf[n].read() for n in buf}


def assert_state(buf, expected):
    assert list(buf) == list(expected)
    for n, v in expected.items():
        got = buf[n].read()
        assert got.dtype == v.dtype, n
        np.testing.assert_array_equal(got, v, err_msg=n)


def quiet_open(*a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mmsb.open(*a, **k)


# ------------------------------------------------------------------------------------------------ reopen

@pytest.mark.parametrize("sr", BUILTINS)
def test_reopen_every_dtype_and_semiring(tmp_path, sr):
    rng = np.random.default_rng(BUILTINS.index(sr))
    root = str(tmp_path / "s")
    expected = {}
    meta = {}
    with mmsb.open(root, "w") as buf:
        for dt in DTYPES:
            if not supported(sr, dt):
                continue
            name = f"p_{dt}"
            p = buf.create_page(name, (3, 5), dtype=dt, semiring=sr, metadata={"dt": dt})
            model = np.full(15, semirings.get(sr).zero_for(dt), dtype=dt)
            vals = rand_values(rng, dt, 15, sr)
            buf.write(p, vals.reshape(3, 5))
            model[:] = vals
            idx = rng.integers(0, 15, 9)
            vals = rand_values(rng, dt, 9, sr)
            buf.write(p, vals, index=idx, accumulate=True)
            model_acc(model, idx, vals, sr)
            mask = rng.random((3, 5)) < 0.4
            vals = rand_values(rng, dt, 15, sr).reshape(3, 5)
            buf.write(p, vals, mask=mask)
            model[mask.reshape(-1)] = vals.reshape(-1)[mask.reshape(-1)]
            expected[name] = model.reshape(3, 5)
            meta[name] = (p.epoch, {"dt": dt})
        assert_state(buf, expected)
        epoch = buf.epoch
    assert expected, sr
    for mode in ("r", "r+", "a"):
        with mmsb.open(root, mode) as buf:
            assert buf.epoch == epoch
            assert_state(buf, expected)
            for n, (ep, md) in meta.items():
                assert buf[n].semiring.name == sr and buf[n].epoch == ep and buf[n].metadata == md
                assert buf[n].shape == (3, 5)
    assert mmsb.verify(root).ok


def test_reopen_with_checkpoint_and_tail(tmp_path):
    root = str(tmp_path / "s")
    rng = np.random.default_rng(1)
    with mmsb.open(root, "w", segment_bytes=600) as buf:
        p = buf.create_page("x", 50, dtype="int64", semiring="min_plus")
        model = np.full(50, np.iinfo(np.int64).max)
        for k in range(30):
            idx = rng.integers(0, 50, 5)
            vals = rng.integers(0, 1000, 5)
            buf.write(p, vals, index=idx, accumulate=True)
            model_acc(model, idx, vals, "min_plus")
            if k % 10 == 4:
                buf.checkpoint()
        assert len(iter_segments(os.path.join(root, "log"))) > 2
    with mmsb.open(root, "r") as buf:
        np.testing.assert_array_equal(buf["x"].read(), model)
        assert buf.stats()["store"]["checkpoints"] == [6, 16, 26]


def _rules_store(root, register=True):
    buf = mmsb.open(root, "w")
    a = buf.create_page("a", 6, semiring="plus_times")
    w = buf.create_page("w", 6, semiring="min_plus")
    lk = buf.create_page("lk", 4, semiring="plus_times")
    cl = buf.create_page("cl", 6, semiring="min_plus")
    dv = buf.create_page("dv", 6, semiring="plus_times")
    A = sp.random(4, 6, density=0.5, random_state=3, format="csr")
    buf.link(lk, a, A)
    W = np.full((6, 6), np.inf)
    for u in range(5):
        W[u, u + 1] = 1.0 + u
    buf.closure(cl, w, sp.csr_matrix(np.where(np.isinf(W.T), 0, W.T)))
    buf.register_function("square_plus", square_plus)
    buf.derive(dv, ["a"], "square_plus")
    return buf, A.toarray()


def square_plus(x):
    return x * x + 1


def minplus_closure(src, WT):
    # x = src (+) WT (x) x under min_plus, with WT's stored entries (scipy csr: nonzeros) as edges
    x = src.copy()
    M = sp.csr_matrix(WT)
    rows, cols = M.nonzero()
    for _ in range(len(x) + 1):
        new = x.copy()
        for i, j in zip(rows, cols):
            new[i] = min(new[i], M[i, j] + x[j])
        if np.array_equal(new, x):
            break
        x = new
    return x


def test_reopen_rules_rebind(tmp_path):
    root = str(tmp_path / "s")
    buf, A = _rules_store(root)
    W = np.full((6, 6), np.inf)
    for u in range(5):
        W[u, u + 1] = 1.0 + u
    WT = np.where(np.isinf(W.T), 0, W.T)
    buf.write("a", np.arange(6.0))
    src = np.array([0.0, np.inf, np.inf, 7, np.inf, np.inf])
    buf.write("w", src)
    before = state(buf)
    np.testing.assert_allclose(before["lk"], A @ np.arange(6.0))
    np.testing.assert_array_equal(before["dv"], np.arange(6.0) ** 2 + 1)
    np.testing.assert_array_equal(before["cl"], minplus_closure(src, WT))
    buf.close()
    with mmsb.open(root, "a", functions={"square_plus": square_plus}) as buf:
        assert_state(buf, before)
        assert buf.graph.parents("lk") == ["a"] and buf.graph.parents("cl") == ["w"]
        buf.write("a", 2.0, index=[1], accumulate=True)
        buf.write("w", 0.5, index=[3])
        a = np.arange(6.0)
        a[1] += 2
        np.testing.assert_allclose(buf["lk"].read(), A @ a)
        np.testing.assert_array_equal(buf["dv"].read(), a ** 2 + 1)
        src[3] = 0.5
        np.testing.assert_array_equal(buf["cl"].read(), minplus_closure(src, WT))
        after = state(buf)
    with pytest.warns(RuntimeWarning, match="square_plus"):
        buf = mmsb.open(root, "r")       # derived values were logged: no function needed to read them
    with buf:
        assert_state(buf, after)


def test_unregistered_derive_warns_and_errors_on_use(tmp_path):
    root = str(tmp_path / "s")
    buf, _ = _rules_store(root)
    buf.write("a", np.arange(6.0))
    before = state(buf)
    epoch = buf.epoch
    buf.close()
    with pytest.warns(RuntimeWarning, match="square_plus"):
        buf = mmsb.open(root, "a")
    try:
        assert_state(buf, before)
        with pytest.raises(MMSBError, match="square_plus"):
            buf.write("a", 5.0, index=[0])
        # never silent wrong data: nothing applied, nothing logged
        assert buf.epoch == epoch
        assert_state(buf, before)
        assert max(d.epoch for d in buf.log.query()) <= epoch
        buf.register_function("square_plus", square_plus)
        buf.write("a", 5.0, index=[0])
        a = np.arange(6.0)
        a[0] = 5
        np.testing.assert_array_equal(buf["dv"].read(), a ** 2 + 1)
    finally:
        buf.close()
    with pytest.warns(RuntimeWarning):
        with mmsb.open(root, "r") as r:
            np.testing.assert_array_equal(r["dv"].read(), a ** 2 + 1)


# ------------------------------------------------------------------------------------------------ modes

def test_modes(tmp_path):
    root = str(tmp_path / "s")
    for mode in ("r", "r+"):
        with pytest.raises(FileNotFoundError):
            mmsb.open(root, mode)
    assert not os.path.exists(root) or not os.listdir(root)
    for mode in ("a", "w", "x"):
        r = str(tmp_path / f"new_{mode}")
        buf = mmsb.open(r, mode)
        try:
            rep = mmsb.verify(r)         # a valid empty store on disk before any commit
            assert rep.ok, rep.problems
            assert buf.epoch == 0 and len(buf) == 0
            with mmsb.open(r, "r") as rd:
                assert rd.epoch == 0 and len(rd) == 0
        finally:
            buf.close()
        assert mmsb.verify(r).ok
    with mmsb.open(root, "x") as buf:
        buf.create_page("p", 4)
        buf.write("p", np.ones(4))
    with pytest.raises(FileExistsError):
        mmsb.open(root, "x")
    with mmsb.open(root, "a") as buf:
        assert buf.epoch == 2 and list(buf) == ["p"]
    with mmsb.open(root, "r+") as buf:
        buf.write("p", 2.0, index=[0])
        assert buf.epoch == 3
    with mmsb.open(root, "w") as buf:      # truncates
        assert buf.epoch == 0 and len(buf) == 0
    with mmsb.open(root, "r") as buf:
        assert buf.epoch == 0 and len(buf) == 0
    assert mmsb.verify(root).ok
    with pytest.raises(ValueError):
        mmsb.open(root, "rw")
    with pytest.raises(ValueError):
        mmsb.open(root, "a", durability="sometimes")


def test_reader_is_read_only(tmp_path):
    root = str(tmp_path / "s")
    with mmsb.open(root, "w") as buf:
        buf.create_page("p", 4)
        buf.create_page("q", 4)
    with mmsb.open(root, "r") as buf:
        for call in (lambda: buf.write("p", 1.0, index=[0]), lambda: buf.create_page("z", 2),
                     lambda: buf.drop_page("p"), lambda: buf.checkpoint(), lambda: buf.compact(),
                     lambda: buf.link("q", "p", np.eye(4)), lambda: buf.transaction()):
            with pytest.raises(ReadOnlyError):
                call()
        assert buf.epoch == 2
        view = buf.at(1)
        with pytest.raises(ReadOnlyError):
            view.write("p", 1.0, index=[0])
    assert mmsb.verify(root).ok


HOLD = textwrap.dedent("""
    import sys, mmsb, numpy as np
    buf = mmsb.open(sys.argv[1], "a")
    print("locked", flush=True)
    sys.stdin.readline()
    buf.write("p", 9.0, index=[1])
    buf.close()
    print("done", flush=True)
""")

TRY = textwrap.dedent("""
    import sys, mmsb
    from mmsb.errors import StoreLockedError
    try:
        mmsb.open(sys.argv[1], sys.argv[2])
    except StoreLockedError as e:
        print("StoreLockedError", isinstance(e, BlockingIOError))
    else:
        print("opened")
""")


def test_one_writer_and_readers_beside_it(tmp_path):
    root = str(tmp_path / "s")
    with mmsb.open(root, "w") as buf:
        p = buf.create_page("p", 4)
        buf.write(p, np.arange(4.0))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, root], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for mode in ("a", "r+", "w", "x"):
            if mode == "x":
                with pytest.raises((FileExistsError, StoreLockedError)):
                    mmsb.open(root, mode)
                continue
            with pytest.raises(StoreLockedError):
                mmsb.open(root, mode)
        out = subprocess.run([sys.executable, "-c", TRY, root, "a"], capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == "StoreLockedError True", out.stderr
        reader = mmsb.open(root, "r")        # readers take no lock
        np.testing.assert_array_equal(reader["p"].read(), np.arange(4.0))
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "done"
        # the reader still sees the state committed when it opened
        assert reader.epoch == 2
        np.testing.assert_array_equal(reader["p"].read(), np.arange(4.0))
        np.testing.assert_array_equal(reader.at(2)["p"].read(), np.arange(4.0))
        reader.close()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    with mmsb.open(root, "r") as r2:
        assert r2.epoch == 3
        np.testing.assert_array_equal(r2["p"].read(), [0, 9, 2, 3])
    with mmsb.open(root, "a") as w:       # lock released by the other process's close
        assert w.epoch == 3


def test_lock_released_on_close_and_failed_open(tmp_path):
    root = str(tmp_path / "s")
    buf = mmsb.open(root, "w")
    with pytest.raises(StoreLockedError):
        mmsb.open(root, "a")
    buf.close()
    with mmsb.open(root, "a"):
        pass
    with pytest.raises(FileNotFoundError):
        mmsb.open(str(tmp_path / "missing"), "r+")
    with mmsb.open(root, "a"):
        pass


# ------------------------------------------------------------------------------------------------ history

def random_history(buf, rng, n, checkpoints=()):
    """Random writes on three pages; returns {epoch: {name: array}} from a numpy model."""
    pages = {"f": ("float64", "plus_times"), "i": ("int64", "max_plus"), "b": ("bool", "or_and")}
    model = {}
    snaps = {0: {}}
    for name, (dt, sr) in pages.items():
        buf.create_page(name, 12, dtype=dt, semiring=sr)
        model[name] = np.full(12, semirings.get(sr).zero_for(dt), dtype=dt)
        snaps[buf.epoch] = {k: v.copy() for k, v in model.items()}
    for k in range(n):
        name = list(pages)[rng.integers(0, 3)]
        dt, sr = pages[name]
        kind = rng.integers(0, 3)
        if kind == 0:
            idx = rng.integers(0, 12, 4)
            vals = rand_values(rng, dt, 4, sr)
            e = buf.write(name, vals, index=idx, accumulate=True)
            model_acc(model[name], idx, vals, sr)
        elif kind == 1:
            idx = rng.integers(0, 12, 4)
            vals = rand_values(rng, dt, 4, sr)
            e = buf.write(name, vals, index=idx)
            for i, v in zip(idx, vals):
                model[name][i] = v
        else:
            mask = rng.random(12) < 0.5
            vals = rand_values(rng, dt, 12, sr)
            e = buf.write(name, vals, mask=mask)
            model[name][mask] = vals[mask]
        snaps[e] = {k2: v.copy() for k2, v in model.items()}
        if k in checkpoints:
            buf.checkpoint()
    return snaps


def check_at(buf, snaps):
    last = {}
    for e in range(buf.epoch + 1):
        if e in snaps:
            last = snaps[e]
        view = buf.at(e)
        assert view.epoch == e
        assert sorted(view) == sorted(last)
        for n, v in last.items():
            np.testing.assert_array_equal(view[n].read(), v, err_msg=f"{n} at {e}")


@pytest.mark.parametrize("durability", ["fsync", "flush", "none"])
def test_replay_every_epoch_across_checkpoints(tmp_path, durability):
    root = str(tmp_path / "s")
    rng = np.random.default_rng(7)
    with mmsb.open(root, "w", durability=durability, segment_bytes=900) as buf:
        snaps = random_history(buf, rng, 40, checkpoints={9, 21, 22})
        check_at(buf, snaps)
    for mode in ("r", "a"):
        with mmsb.open(root, mode, durability=durability) as buf:
            assert buf.epoch == max(snaps)
            check_at(buf, snaps)
    assert mmsb.verify(root).ok


def test_replay_in_memory(tmp_path):
    rng = np.random.default_rng(8)
    with mmsb.open(None) as buf:
        snaps = random_history(buf, rng, 30, checkpoints={5, 17})
        check_at(buf, snaps)


@pytest.mark.parametrize("path", ["store", None])
def test_compact_drops_history_keeps_later(tmp_path, path):
    root = str(tmp_path / "s") if path else None
    rng = np.random.default_rng(9)
    buf = mmsb.open(root, "w", segment_bytes=500) if root else mmsb.open(None)
    snaps = random_history(buf, rng, 40, checkpoints={10})
    top = buf.epoch
    horizon = buf.compact(keep=8)
    assert 0 < horizon <= top - 8
    with pytest.raises(HistoryError):
        buf.at(horizon - 1)
    with pytest.raises(HistoryError):
        buf.at(top + 1)
    for e in range(horizon, top + 1):
        last = snaps[max(k for k in snaps if k <= e)]
        for n, v in last.items():
            np.testing.assert_array_equal(buf.at(e)[n].read(), v)
    # writes after compaction, then reopen
    buf.write("f", 1.0, index=[0], accumulate=True)
    snaps[buf.epoch] = dict(snaps[top], f=snaps[top]["f"].copy())
    snaps[buf.epoch]["f"][0] += 1.0
    final = snaps[buf.epoch]
    assert_state(buf, final)
    buf.close()
    if root is None:
        return
    assert mmsb.verify(root).ok
    with mmsb.open(root, "r") as r:
        assert_state(r, final)
        h = r.stats()["store"]["horizon"]
        if h > 0:
            with pytest.raises(HistoryError):
                r.at(h - 1)
        for e in range(max(h, horizon), r.epoch + 1):
            last = snaps[max(k for k in snaps if k <= e)]
            for n, v in last.items():
                np.testing.assert_array_equal(r.at(e)[n].read(), v)
        # log segments before the horizon were removed
        assert r.log.stats()["first_epoch"] > 1


# ------------------------------------------------------------------------------------------------ torn tails

def _two_phase_store(root, durability="fsync"):
    buf = mmsb.open(root, "w", durability=durability)
    buf.create_page("p", 16, dtype="float64")
    buf.write("p", np.arange(16.0))
    before = state(buf)
    e0 = buf.epoch
    seg = iter_segments(os.path.join(root, "log"))[-1][1]
    start = buf._log._segs[-1].size if durability != "none" else None   # the log's end (the file may hold reserved zeros)
    buf.write("p", 1.5, index=[3, 4, 5], accumulate=True)
    buf.close()
    return seg, start, e0, before


def test_truncate_final_transaction_every_offset(tmp_path):
    root = str(tmp_path / "s")
    seg, start, e0, before = _two_phase_store(root)
    data = open(seg, "rb").read()
    assert start < len(data)
    saved = str(tmp_path / "orig")
    shutil.copytree(root, saved)
    for cut in range(start, len(data)):
        shutil.rmtree(root)
        shutil.copytree(saved, root)
        with open(seg, "r+b") as f:
            f.truncate(cut)
        if cut > start:
            assert not mmsb.verify(root).ok           # verify reports the torn tail
        mode = "a" if cut % 2 else "r"
        ctx = pytest.warns(TornWriteWarning) if cut > start else warnings.catch_warnings()
        with ctx:
            buf = mmsb.open(root, mode)
        try:
            assert buf.epoch == e0, cut
            assert_state(buf, before)
            assert buf.log.stats()["torn_tail_bytes"] == cut - start
            assert buf.stats()["transactions"]["torn_tail_bytes"] == cut - start
            if mode == "a":
                buf.write("p", 7.0, index=[0])        # the log continues cleanly after the cut
        finally:
            buf.close()
        if mode == "a":
            assert mmsb.verify(root).ok
            with mmsb.open(root, "r") as r:
                exp = before["p"].copy()
                exp[0] = 7.0
                np.testing.assert_array_equal(r["p"].read(), exp)
                assert r.epoch == e0 + 1


# ------------------------------------------------------------------------------------------------ corruption

def _corruption_store(root):
    with mmsb.open(root, "w") as buf:
        p = buf.create_page("p", 64, dtype="float64")
        q = buf.create_page("q", 64, dtype="int32", semiring="min_plus")
        snaps = {}
        for k in range(6):
            buf.write(p, np.arange(64.0) * k)
            snaps[buf.epoch] = state(buf)
            buf.write(q, np.arange(64, dtype=np.int32) - k, index=np.arange(64), accumulate=True)
            snaps[buf.epoch] = state(buf)
            if k == 2:
                buf.checkpoint()
    return snaps


def test_flipped_byte_detected(tmp_path):
    root = str(tmp_path / "s")
    snaps = _corruption_store(root)
    saved = str(tmp_path / "orig")
    shutil.copytree(root, saved)
    files = [p for _, p in iter_segments(os.path.join(root, "log"))]
    ck = os.path.join(root, "checkpoints")
    files += [os.path.join(ck, n) for n in os.listdir(ck)]
    rng = np.random.default_rng(11)
    checked = 0
    for path in files:
        size = os.path.getsize(path)
        offsets = sorted(set(rng.integers(0, size, 25).tolist()) | {0, size - 1})
        for off in offsets:
            shutil.rmtree(root)
            shutil.copytree(saved, root)
            with open(path, "r+b") as f:
                f.seek(off)
                b = f.read(1)
                f.seek(off)
                f.write(bytes([b[0] ^ (1 << int(rng.integers(0, 8)))]))
            rep = mmsb.verify(root)
            assert not rep.ok, (path, off)
            # opening strictly never yields wrong data: either an error, or (torn tail of the last
            # transaction only) a committed prefix
            try:
                with warnings.catch_warnings(record=True) as w:
                    warnings.simplefilter("always")
                    buf = mmsb.open(root, "r")
            except CorruptionError:
                pass
            else:
                with buf:
                    if any(issubclass(x.category, TornWriteWarning) for x in w):
                        assert buf.epoch in snaps and buf.epoch < max(snaps)
                        assert_state(buf, snaps[buf.epoch])
                    elif path.endswith(".ckpt"):
                        # a corrupt checkpoint: open falls back to an older one (none here: the whole log)
                        assert any("falling back" in str(x.message) for x in w), (path, off)
                        assert buf.epoch == max(snaps)
                        assert_state(buf, snaps[buf.epoch])
                    else:
                        # the flip hit the payload of a record the checkpoint covers: open does not read it
                        # (nothing in it is replayed), the state is right, and reading that history raises
                        assert path.endswith(".seg"), (path, off)
                        assert buf.epoch == max(snaps)
                        assert_state(buf, snaps[buf.epoch])
                        with pytest.raises(CorruptionError):
                            list(buf.log.query())
            if path.endswith(".seg"):
                # recovery="truncate" opens at the last good committed transaction
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    buf = mmsb.open(root, "a", recovery="truncate")
                with buf:
                    assert buf.epoch in snaps or buf.epoch <= 2
                    if buf.epoch in snaps:
                        assert_state(buf, snaps[buf.epoch])
                    buf.write("p", 1.0, index=[0])
                assert mmsb.verify(root).ok
            checked += 1
    assert checked > 40


_NONE_CHILD = r"""
import os, sys
import mmsb
buf = mmsb.open(sys.argv[1], "w", durability="none")
buf.create_page("p", 4)
for k in range(5):
    buf.write("p", float(k + 1), index=[k % 4])
buf.checkpoint()
e = buf.write("p", 9.0, index=[0])
print(e, flush=True)
os._exit(0)            # no close, no flush: only what the OS already holds survives
"""


def test_durability_none_hands_each_commit_to_the_os(tmp_path):
    """docs/concepts.md: durability="none" leaves durability to the OS. An acknowledged commit must therefore be in
    the OS (not in a user-space buffer) when commit returns: a process that exits with os._exit right after it
    loses nothing, and the history around the checkpoint replays."""
    import subprocess
    import sys

    root = str(tmp_path / "s")
    out = subprocess.run([sys.executable, "-c", _NONE_CHILD, root], capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    acked = int(out.stdout.split()[-1])
    with mmsb.open(root, "a", durability="none") as buf:
        assert buf.epoch == acked == 7
        np.testing.assert_array_equal(buf["p"].read(), [9.0, 2.0, 3.0, 4.0])
        np.testing.assert_array_equal(buf.at(6)["p"].read(), [5.0, 2.0, 3.0, 4.0])
        np.testing.assert_array_equal(buf.at(2)["p"].read(), [1.0, 0.0, 0.0, 0.0])
    assert mmsb.verify(root).ok


def test_large_records_append_past_the_reserved_zeros(tmp_path):
    """Under fsync a record of 1/4 MiB or more never waits for zeros to be reserved ahead of it (one fsync per
    commit); small records after it reserve again; the segment is trimmed on close and reopens to the same state."""
    root = str(tmp_path / "s")
    rng = np.random.default_rng(4)
    n = 1 << 16                                  # 512 KiB of float64: one whole-page write is a large record
    model = np.zeros(n)
    with mmsb.open(root, mode="w", durability="fsync") as buf:
        p = buf.create_page("p", n)
        buf.write(p, 1.0, index=[1])
        model[1] = 1.0
        seg = buf._log._segs[-1]
        assert os.path.getsize(seg.path) > seg.size           # a small commit sits on reserved zeros
        ended = 0
        for _ in range(6):
            f0 = buf.log.stats()["fsyncs"]
            v = rng.random(n)
            buf.write(p, v)
            model[:] = v
            assert buf.log.stats()["fsyncs"] - f0 == 1        # the commit's own fsync, no reservation
            ended += os.path.getsize(seg.path) == seg.size    # past the reserved zeros: the record ends the file
        assert ended >= 4
        f0 = buf.log.stats()["fsyncs"]
        buf.write(p, 2.0, index=[5])
        model[5] = 2.0
        assert buf.log.stats()["fsyncs"] - f0 == 2            # zeros reserved (and synced) again, then the commit
        assert os.path.getsize(seg.path) > seg.size
    assert os.path.getsize(seg.path) == seg.size              # trimmed on close
    with mmsb.open(root, mode="r") as ro:
        np.testing.assert_array_equal(ro["p"].read(), model)

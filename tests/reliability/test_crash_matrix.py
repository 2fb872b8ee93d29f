"""Kill -9 with matrix deltas: a forked child commits seeded transactions that change matrix pages (closure and
link over them) and page entries, and reports every acknowledged epoch; the parent SIGKILLs it at a random moment,
reopens the store and checks that no acknowledged commit was lost and that the state (matrices included) and a
past epoch replayed with ``buf.at`` equal a numpy model. Short enough for CI (a few seconds)."""
import os
import random
import selectors
import signal
import time
import warnings

import numpy as np
import pytest

import mmsb
from mmsb.errors import HistoryError, TornWriteWarning

from _figures import count

pytestmark = [pytest.mark.reliability]

N = 10
INF = np.inf


def _initial():
    rng = np.random.default_rng(4242)
    W = np.full((N, N), INF)
    e = rng.random((N, N)) < 0.25
    W[e] = rng.integers(1, 6, int(e.sum()))
    P = np.where(rng.random((N, N)) < 0.3, rng.integers(-3, 4, (N, N)), 0).astype(np.int64)
    return {"W": W, "P": P, "s": np.full(N, INF), "x": np.zeros(N, dtype=np.int64)}


def _setup(buf):
    st = _initial()
    buf.create_page("s", N, semiring="min_plus")
    buf.create_page("d", N, semiring="min_plus")
    r, c = np.nonzero(np.isfinite(st["W"]))
    import scipy.sparse as sp
    W = buf.create_matrix("W", (N, N), semiring="min_plus", data=sp.csr_array((st["W"][r, c], (r, c)), shape=(N, N)))
    buf.closure("d", "s", W)
    buf.create_page("x", N, dtype="int64")
    buf.create_page("y", N, dtype="int64")
    buf.create_matrix("P", (N, N), dtype="int64", data=st["P"])
    buf.link("y", "x", "P")
    return buf.epoch


def _txn(seed, trial, k):
    """The ops of transaction k: [(page, values, index, accumulate)]; W gets removals and min-accumulates, both
    possibly in one commit."""
    rng = np.random.default_rng([seed, trial, k])
    ops = []
    for _ in range(int(rng.integers(1, 4))):
        what = int(rng.integers(0, 4))
        n = int(rng.integers(1, 4))
        i, j = rng.integers(0, N, n), rng.integers(0, N, n)
        if what == 0:
            if rng.random() < 0.4:
                ops.append(("W", np.full(n, INF), (i, j), False))
            else:
                ops.append(("W", rng.integers(1, 6, n).astype(float), (i, j), True))
        elif what == 1:
            ops.append(("P", rng.integers(-3, 4, n).astype(np.int64), (i, j), bool(rng.random() < 0.5)))
        elif what == 2:
            ops.append(("s", rng.integers(0, 20, n).astype(float), i, False))
        else:
            ops.append(("x", rng.integers(-3, 4, n).astype(np.int64), i, True))
    return ops


def _apply(st, ops):
    st = {k: v.copy() for k, v in st.items()}
    for page, vals, index, acc in ops:
        a = st[page]
        if acc:
            (np.minimum if page == "W" else np.add).at(a, index, vals)
        else:
            a[index] = vals
    return st


def _full(st):
    W, s = st["W"], st["s"]
    d = s.copy()
    for _ in range(N + 1):
        d = np.minimum(s, (W + d[None, :]).min(axis=1))
    return {"s": s, "d": d, "x": st["x"], "y": st["P"] @ st["x"], "W": W, "P": st["P"]}


def _state(buf):
    out = {}
    for name in ("s", "d", "x", "y"):
        out[name] = buf[name].read()
    for name, zero in (("W", INF), ("P", 0)):
        M = buf[name]
        a = np.full(M.shape, zero, dtype=M.dtype)
        c = M.read().tocoo()
        a[c.row, c.col] = c.data
        out[name] = a
    return out


def _diff(got, want):
    return [n for n in want if not np.array_equal(got[n], want[n])]


def _child(path, seed, trial, durability, w):
    buf = mmsb.open(path, "a", durability=durability, segment_bytes=2048)
    w.write(f"S {buf.epoch}\n")
    rng = np.random.default_rng([seed, trial, 777])
    k = 0
    while True:
        ops = _txn(seed, trial, k)
        if len(ops) == 1:
            page, vals, index, acc = ops[0]
            e = buf.write(page, vals, index=index, accumulate=acc)
        else:
            with buf.transaction() as tx:
                for page, vals, index, acc in ops:
                    tx.write(page, vals, index=index, accumulate=acc)
            e = buf.epoch
        w.write(f"A {e}\n")
        k += 1
        if rng.random() < 0.1:
            w.write(f"C {buf.checkpoint()}\n")


def _run(path, seed, trial, durability, kill_after):
    """Fork a child running _child; SIGKILL it ``kill_after`` seconds after it reported its start."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                         # child
        code = 0
        out = None
        try:
            os.close(r)
            out = os.fdopen(w, "w", buffering=1)
            _child(path, seed, trial, durability, out)
        except BaseException:
            import traceback
            if out is not None:
                out.write("X " + traceback.format_exc().replace("\n", " | ") + "\n")
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    rf = os.fdopen(r, "rb", buffering=0)
    sel = selectors.DefaultSelector()
    sel.register(rf, selectors.EVENT_READ)
    data, deadline, hard = b"", None, time.monotonic() + 30
    while time.monotonic() < hard and (deadline is None or time.monotonic() < deadline):
        for _ in sel.select(timeout=0.02):
            chunk = os.read(rf.fileno(), 65536)
            if not chunk:
                deadline = time.monotonic()
            data += chunk
        if deadline is None and b"S " in data:
            deadline = time.monotonic() + kill_after
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    data += rf.read()
    rf.close()
    sel.close()
    lines = data.decode().split("\n")
    if not data.endswith(b"\n"):
        lines = lines[:-1]                               # a line cut by the kill
    return [ln for ln in lines if ln]


@pytest.mark.parametrize("durability", ["fsync", "flush"])
def test_crash_loop_with_matrix_deltas(tmp_path, LONG, durability):
    trials = 60 if LONG else 6
    seed = 3150 + (durability == "flush")
    rnd = random.Random(seed)
    path = str(tmp_path / "store")
    with mmsb.open(path, "w", segment_bytes=2048) as buf:
        e0 = _setup(buf)
    hist = {e0: _initial()}
    for trial in range(trials):
        start = max(hist)
        lines = _run(path, seed, trial, durability, rnd.uniform(0.0, 0.25))
        assert not [ln for ln in lines if ln.startswith("X ")], lines[-1]
        starts = [int(ln.split()[1]) for ln in lines if ln.startswith("S ")]
        acked = [int(ln.split()[1]) for ln in lines if ln.startswith("A ")]
        assert starts == [start], f"child recovered {starts}, expected {start}"
        last = max(acked, default=start)
        assert acked == list(range(start + 1, last + 1)), "acknowledged epochs must be consecutive"
        count("crash_matrix_acked", last - start)
        st = hist[start]
        for k in range(last - start + 1):               # one more than acknowledged may have committed
            st = _apply(st, _txn(seed, trial, k))
            hist[start + k + 1] = st
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TornWriteWarning)
            buf = mmsb.open(path, "a", segment_bytes=2048)
        try:
            e = buf.epoch
            assert last <= e <= last + 1, f"recovered epoch {e}, acknowledged {last}"
            d = _diff(_state(buf), _full(hist[e]))
            assert not d, f"state at epoch {e} differs from the model on {d}"
            pe = random.Random(e).choice(sorted(hist))
            if pe <= e:
                try:
                    d = _diff(_state(buf.at(pe)), _full(hist[pe]))
                    assert not d, f"at({pe}) differs from the model on {d}"
                except HistoryError:
                    pass
            for ep in [ep for ep in hist if ep > e]:
                del hist[ep]
        finally:
            buf.close()
        count("crash_trials")
    rep = mmsb.verify(path)
    assert rep.ok, rep.problems

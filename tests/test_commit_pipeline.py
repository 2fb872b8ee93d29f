"""Every commit goes through one pipeline: the paths that used to diverge agree (counters, memory enforcement,
transaction ids on failure, conflict history for device waves), and a failed commit leaves nothing behind."""
import numpy as np
import pytest

import mmsb
from mmsb.errors import ConflictError
from mmsb.memory import MemoryManager
from mmsb.propagate import Change


def _script(buf):
    a = buf.create_page("a", 6, semiring="min_plus")
    b = buf.create_page("b", 6, semiring="min_plus")
    c = buf.create_page("c", 6)
    buf.link(b, a, np.eye(6) + np.eye(6, k=1))
    buf.derive(c, [b], lambda v: np.where(np.isfinite(v), v * 2, 0.0))
    for k in range(5):
        buf.write(a, [float(k)], index=[k], accumulate=True)
        buf.propagate()
    with buf.batch():
        buf.write(a, [0.5], index=[5])
        buf.write(a, [0.25], index=[4])
    buf.propagate()
    return {n: buf[n].read() for n in buf}


def test_eager_and_deferred_count_the_same_deltas():
    eager = mmsb.open(None)
    deferred = mmsb.open(None, propagation="deferred")
    s1, s2 = _script(eager), _script(deferred)
    for name in s1:
        np.testing.assert_array_equal(s1[name], s2[name])
    t1, t2 = eager.stats()["transactions"], deferred.stats()["transactions"]
    assert t1["deltas"] == t2["deltas"] > 0
    assert sum(1 for _ in eager.log.query()) == t1["deltas"]
    assert sum(1 for _ in deferred.log.query()) == t2["deltas"]


@pytest.mark.parametrize("propagation", ["eager", "deferred"])
def test_memory_is_enforced_after_every_kind_of_commit(monkeypatch, propagation):
    calls = []
    real = MemoryManager.enforce
    monkeypatch.setattr(MemoryManager, "enforce", lambda self: (calls.append(1), real(self))[1])
    buf = mmsb.open(None, memory_limit="1 MiB", propagation=propagation)
    kinds = {}

    def step(name, fn):
        before = len(calls)
        fn()
        kinds[name] = len(calls) - before

    step("create_page", lambda: buf.create_page("x", 1000))
    step("create_page 2", lambda: buf.create_page("y", 1000))
    step("link", lambda: buf.link("y", "x", np.eye(1000)))
    step("write", lambda: buf.write("x", [1.0], index=[3]))

    def batch():
        with buf.batch():
            buf.write("x", [2.0], index=[4])
    step("batch", batch)

    def txn():
        with buf.transaction() as tx:
            tx.read("x", [1])
            tx.write("x", [3.0], index=[1])
    step("transaction", txn)
    step("propagate", buf.propagate)
    step("drop_page", lambda: buf.drop_page("y"))
    expected = {k: 1 for k in kinds}
    if propagation == "eager":
        expected["propagate"] = 0                     # nothing queued: no commit at all
    assert kinds == expected


def test_a_failed_log_append_takes_no_epoch_and_no_transaction_id(monkeypatch):
    buf = mmsb.open(None)
    x, y = buf.create_page("x", 4), buf.create_page("y", 4)
    buf.link(y, x, np.eye(4) * 3)
    buf.write(x, [1.0], index=[0])
    epoch, txid = buf.epoch, buf._pipe.txid
    before = {n: buf[n].read() for n in buf}
    stats = dict(buf.stats()["transactions"])

    def broken(txn):
        raise OSError("disk full")

    monkeypatch.setattr(buf._log, "append", broken)
    for attempt in (lambda: buf.write(x, [5.0], index=[2]), lambda: buf.write(x, np.arange(4.0)),
                    lambda: buf.create_page("z", 2), lambda: buf.unlink(y)):
        with pytest.raises(OSError):
            attempt()
        assert (buf.epoch, buf._pipe.txid) == (epoch, txid)
        for n, v in before.items():
            np.testing.assert_array_equal(buf[n].read(), v)
        assert "z" not in buf and buf.graph.parents(y) == ["x"]
    assert buf.stats()["transactions"] == stats
    monkeypatch.undo()
    assert buf.write(x, [5.0], index=[2]) == epoch + 1 and buf._pipe.txid == txid + 1
    txns = list(buf._log.txns())
    assert [t.txid for t in txns] == list(range(1, len(txns) + 1))
    np.testing.assert_array_equal(y.read(), [3.0, 0.0, 15.0, 0.0])


def test_a_device_wave_is_recorded_for_conflicts():
    """The GPU graph wave commits through the pipeline with a device wave: an open transaction that read what
    the wave changed conflicts, as for any other commit."""
    buf = mmsb.open(None)
    y = buf.create_page("y", 4)
    tx = buf.transaction()
    tx.read(y, [2])

    def device_wave(undo):
        arr = buf._memory.array(y)
        old = arr[[2]].copy()
        arr[2] = 7.0
        undo.record(lambda: buf._memory.array(y), np.array([2]), old)
        return {"y": Change(np.array([2], dtype=np.int64), old)}

    e = buf._pipe.commit([], device_wave=device_wave)
    assert e == buf.epoch and y.read()[2] == 7.0
    assert [d.page for d in buf.log.query(since=e - 1)] == ["y"] and buf.stats()["transactions"]["deltas"] == 1
    tx.write(y, [1.0], index=[0])
    with pytest.raises(ConflictError):
        tx.commit()
    assert buf.stats()["transactions"]["conflicts"] == 1


def test_a_device_wave_that_changes_nothing_takes_no_epoch():
    buf = mmsb.open(None)
    buf.create_page("y", 4)
    e = buf.epoch
    assert buf._pipe.commit([], device_wave=lambda undo: {}, skip_empty=True) == e == buf.epoch


@pytest.mark.parametrize("checkpoint", [False, True])
def test_deferred_pending_work_survives_reopen(tmp_path, checkpoint):
    with mmsb.open(tmp_path / "s", "w", propagation="deferred") as b:
        x, y = b.create_page("x", 3), b.create_page("y", 3)
        b.link(y, x, np.eye(3) * 2)
        b.propagate()
        b.write(x, [1.0, 2.0, 3.0])
        if checkpoint:
            b.checkpoint()
    with mmsb.open(tmp_path / "s", "a", propagation="deferred") as b:
        np.testing.assert_array_equal(b["y"].read(), [0.0, 0.0, 0.0])     # stale until propagate, as before
        b.propagate()
        np.testing.assert_array_equal(b["y"].read(), [2.0, 4.0, 6.0])
        b.write("x", [1.0], index=[0], accumulate=True)
        b.propagate()
        np.testing.assert_array_equal(b["y"].read(), [4.0, 4.0, 6.0])


@pytest.mark.parametrize("sr", ["plus_times", "min_plus", "max_min"])
def test_the_point_strategy_commits_what_the_general_path_commits(sr, monkeypatch):
    """Writes of a few float64 values to a page that rules read take the point strategy (the point merge kernel,
    then the engine's wave): pages, every past epoch, the logged deltas and the counters equal the general
    path's, through a chain of two links and a page nobody reads."""
    import scipy.sparse as sp

    from mmsb import commit

    n = 200
    rng = np.random.default_rng(11)
    A = sp.random(n, n, density=0.03, random_state=2, format="csr")
    A.data = np.round(A.data * 9, 2) + 0.25
    B = sp.random(n, n, density=0.02, random_state=4, format="csr")
    B.data = np.round(B.data * 5, 2) + 0.5
    x0 = np.round(rng.uniform(0, 30, n), 1)
    writes = []
    for _ in range(80):
        k = int(rng.integers(1, 20))                   # above and below the strategy's size limit
        idx = rng.choice(n, size=k, replace=bool(rng.integers(0, 2)))
        writes.append((rng.choice(["x", "z"]), idx, np.round(rng.uniform(0, 30, k), 1), bool(rng.integers(0, 2))))
    runs = []
    for point in (commit._POINT, 0):
        monkeypatch.setattr(commit, "_POINT", point)
        taken = []
        real = commit.CommitPipeline._point

        def spy(self, c, op, real=real, taken=taken):
            token = real(self, c, op)
            taken.append(token is not None)
            return token

        monkeypatch.setattr(commit.CommitPipeline, "_point", spy)
        with mmsb.open(None) as buf:
            x = buf.create_page("x", n, semiring=sr)
            y = buf.create_page("y", n, semiring=sr)
            w = buf.create_page("w", n, semiring=sr)
            buf.create_page("z", n, semiring=sr)
            buf.write(x, x0)
            buf.link(y, x, A)
            buf.link(w, y, B)
            for name, idx, vals, acc in writes:
                buf.write(name, vals, index=idx, accumulate=acc and sr == "plus_times")
            pages = {p: buf[p].read().copy() for p in buf}
            past = [{p: v.read().copy() for p, v in buf.at(e).items()} for e in range(0, buf.epoch + 1, 7)]
            logged = [(d.epoch, d.page, d.sparse()[0].tolist(), d.values.tolist(), d.derived)
                      for d in buf.log.query()]
            counters = buf.stats()["transactions"]
        runs.append((pages, past, logged, counters, any(taken)))
    (p1, h1, l1, c1, took), (p2, h2, l2, c2, took_none) = runs
    assert took and not took_none
    for name in p1:
        np.testing.assert_allclose(p1[name], p2[name], rtol=1e-12)
    for a, b in zip(h1, h2):
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-12)
    assert [t[:3] + t[4:] for t in l1] == [t[:3] + t[4:] for t in l2]
    for a, b in zip(l1, l2):
        np.testing.assert_allclose(a[3], b[3], rtol=1e-12)
    assert c1 == c2


def test_a_write_keeps_its_own_copy_of_an_index_that_shares_the_callers_memory():
    """An index given as array.array (numpy wraps its memory without copying) may change after write() returns,
    inside a batch and after the commit: the delta, the page and the history keep the index as written."""
    import array

    buf = mmsb.open(None)
    p = buf.create_page("p", 10)
    ix = array.array("q", [1])
    with buf.batch():
        buf.write(p, [5.0], index=ix)
        ix[0] = 1 << 40                                  # (out of range: it must never reach the kernels)
    np.testing.assert_array_equal(p.read(), np.eye(10)[1] * 5)
    ix2 = array.array("q", [2, 3])
    e = buf.write(p, [1.0, 2.0], index=ix2)
    ix2[0] = 7
    (d,) = list(buf.log.query(page=p, since=e - 1))
    assert d.index.tolist() == [2, 3]
    np.testing.assert_array_equal(buf.at(e)["p"].read()[[2, 3, 7]], [1.0, 2.0, 0.0])


def test_an_empty_write_runs_no_wave_on_the_point_path():
    """A write of no positions to a page that rules read changes nothing downstream: no rule runs (as on the
    general path), and it still commits its (empty) delta."""
    buf = mmsb.open(None)
    x = buf.create_page("x", 4)
    y = buf.create_page("y", 4)
    calls = []

    def f(v):
        calls.append(1)
        return v + 1

    buf.derive(y, [x], f)
    n = len(calls)
    e = buf.write(x, np.array([]), index=np.array([], dtype=np.int64))
    assert len(calls) == n and e == buf.epoch
    np.testing.assert_array_equal(y.read(), np.ones(4))


def test_the_point_route_follows_the_rules_as_they_change():
    """The point strategy keeps, per written page, the one link its wave runs; adding a second link from the page,
    dropping a rule, and dropping a target page and creating another of its name all change that route: every
    target equals its numpy recompute after each single-entry write."""
    import scipy.sparse as sp

    n = 50
    rng = np.random.default_rng(3)
    A = sp.random(n, n, density=0.1, random_state=5, format="csr")
    B = sp.random(n, n, density=0.1, random_state=6, format="csr")
    buf = mmsb.open(None)
    x = buf.create_page("x", n)
    xs = np.zeros(n)

    def write_and_check(targets):
        for _ in range(5):
            j = int(rng.integers(0, n))
            v = float(rng.uniform(-2, 2))
            buf.write(x, v, index=[j], accumulate=True)
            xs[j] += v
        for name, M in targets.items():
            np.testing.assert_allclose(buf[name].read(), M @ xs, rtol=1e-9, atol=1e-12)

    y = buf.create_page("y", n)
    buf.link(y, x, A)
    write_and_check({"y": A})
    z = buf.create_page("z", n)
    buf.link(z, x, B)                                   # two links from x: the general wave
    write_and_check({"y": A, "z": B})
    buf.drop_page("y", cascade=True)                    # one link again
    write_and_check({"z": B})
    buf.drop_page("z", cascade=True)
    z = buf.create_page("z", n)                         # a new page of the old name, linked through A
    buf.link(z, x, A)
    write_and_check({"z": A})

"""Threads: with_transaction counters end exact; random concurrent transactions are serializable (the final
state equals the serial replay of the log, and every committed transaction's reads match the state just
before its epoch in that serial order); group commit under durability="fsync"."""
import threading

import numpy as np
import pytest

import mmsb
from mmsb.errors import ConflictError


def run_threads(n, target):
    errors = []

    def wrap(k):
        try:
            target(k)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    ts = [threading.Thread(target=wrap, args=(k,)) for k in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors


@pytest.mark.parametrize("where", ["memory", "store"])
def test_with_transaction_counters_exact(tmp_path, where):
    buf = mmsb.open(None) if where == "memory" else mmsb.open(str(tmp_path / "s"), "w", durability="none")
    buf.create_page("c", 4, dtype="int64")
    threads, per = 6, 40

    def work(k):
        for i in range(per):
            slot = (k + i) % 4

            def fn(tx, slot=slot):
                v = tx.read("c", [slot])[0]
                tx.write("c", [v + 1], index=[slot])       # read-modify-write: conflicts are real

            mmsb.with_transaction(buf, fn, retries=10_000)

    run_threads(threads, work)
    counts = buf["c"].read()
    assert counts.sum() == threads * per
    expect = np.zeros(4, dtype=np.int64)
    for k in range(threads):
        for i in range(per):
            expect[(k + i) % 4] += 1
    np.testing.assert_array_equal(counts, expect)
    st = buf.stats()["transactions"]
    assert isinstance(st["lock_waits"], int) and st["lock_waits"] >= 0
    assert st["commits"] >= threads * per and st["open"] == 0
    buf.close()


def test_random_concurrent_transactions_serializable(tmp_path):
    buf = mmsb.open(str(tmp_path / "s"), "w", durability="none")
    P, N = ["a", "b", "c"], 16
    for name in P:
        buf.create_page(name, N, dtype="int64")
    base = buf.epoch
    committed = {}                     # epoch -> [(page, idx, values read)]
    lock = threading.Lock()
    conflicts = [0]

    def work(k):
        rng = np.random.default_rng(1000 + k)
        for _ in range(60):
            reads = []
            src, dst = rng.choice(P, 2)
            ridx = np.unique(rng.integers(0, N, 3))
            widx = rng.integers(0, N, 2)
            tx = buf.transaction()
            try:
                vals = tx.read(src, ridx)
                reads.append((src, ridx, vals.copy()))
                if rng.random() < 0.5:
                    tx.write(dst, np.full(widx.size, int(vals.sum()) % 1000 + k), index=widx)
                else:
                    tx.write(dst, np.full(widx.size, 1 + k), index=widx, accumulate=True)
                e = tx.commit()
            except ConflictError:
                with lock:
                    conflicts[0] += 1
                continue
            with lock:
                assert e not in committed
                committed[e] = reads

    run_threads(4, work)
    assert committed
    # serial replay of the log, in epoch order, into a numpy model
    model = {n: np.zeros(N, dtype=np.int64) for n in P}
    deltas = list(buf.log.query(since=base))
    epochs = [d.epoch for d in deltas]
    assert epochs == sorted(epochs)
    assert set(epochs) == set(committed)
    by_epoch = {}
    for d in deltas:
        by_epoch.setdefault(d.epoch, []).append(d)
    for e in sorted(by_epoch):
        for page, idx, vals in committed[e]:           # reads consistent with the serial order
            np.testing.assert_array_equal(model[page][idx], vals, err_msg=f"tx at epoch {e}")
        for d in by_epoch[e]:
            idx, vals = d.sparse()
            if d.accumulate:
                np.add.at(model[d.page], idx, vals)
            else:
                model[d.page][idx] = vals
    for n in P:
        np.testing.assert_array_equal(buf[n].read(), model[n])
    st = buf.stats()["transactions"]
    assert st["conflicts"] >= conflicts[0]
    buf.close()
    with mmsb.open(str(tmp_path / "s"), "r") as r:
        for n in P:
            np.testing.assert_array_equal(r[n].read(), model[n])


def test_group_commit_fsync_threads(tmp_path):
    root = str(tmp_path / "s")
    buf = mmsb.open(root, "w", durability="fsync")
    buf.create_page("p", 64, dtype="int64")
    threads, per = 4, 25

    def work(k):
        for i in range(per):
            buf.write("p", [1], index=[(k * per + i) % 64], accumulate=True)

    run_threads(threads, work)
    log = buf.log.stats()
    assert buf["p"].read().sum() == threads * per
    assert log["synced_commits"] >= threads * per
    assert log["fsyncs"] >= 1 and log["group_commit_batches"] <= log["synced_commits"]
    buf.close()
    with mmsb.open(root, "r") as r:
        assert r["p"].read().sum() == threads * per and r.epoch == 1 + threads * per

"""Optimistic transactions: conflicts, disjoint writes, intents, aborts leave no trace, read-your-writes,
with_transaction retries."""
import numpy as np
import pytest

import mmsb
from mmsb.errors import ConflictError, InvalidDeltaError, MMSBError


@pytest.fixture(params=["memory", "store"])
def buf(request, tmp_path):
    b = mmsb.open(None) if request.param == "memory" else mmsb.open(str(tmp_path / "s"), "w", durability="none")
    b.create_page("p", 10)
    b.create_page("q", 10, dtype="int64", semiring="min_plus")
    b.create_page("lp", 3)
    b.link("lp", "p", np.arange(30.0).reshape(3, 10) % 4)
    b.write("p", np.arange(10.0))
    yield b
    b.close()


def snapshot(b):
    return {n: b[n].read() for n in b}, b.epoch, len(list(b.log.query()))


def assert_same(b, snap):
    state, epoch, nlog = snap
    assert b.epoch == epoch
    assert len(list(b.log.query())) == nlog
    for n, v in state.items():
        np.testing.assert_array_equal(b[n].read(), v)


def test_conflict_names_page_region_epoch(buf):
    tx = buf.transaction()
    assert tx.read("p", [2, 3, 4]).tolist() == [2, 3, 4]
    tx.write("q", [5], index=[0])
    e = buf.write("p", 100.0, index=[3])          # another commit changes a read element
    before = snapshot(buf)
    with pytest.raises(ConflictError) as ei:
        tx.commit()
    err = ei.value
    assert err.page == "p" and err.epoch == e
    msg = str(err)
    assert "'p'" in msg and "[3]" in msg and f"epoch {e}" in msg
    assert tx.state == "aborted"
    assert_same(buf, before)                      # nothing of the failed transaction was applied
    assert buf.stats()["transactions"]["conflicts"] >= 1


def test_whole_page_read_conflicts_with_any_change(buf):
    tx = buf.transaction()
    tx.read("p")
    tx.write("q", [1], index=[1])
    buf.write("p", 7.0, index=[9])
    with pytest.raises(ConflictError, match="'p'"):
        tx.commit()


def test_derived_page_read_conflicts(buf):
    tx = buf.transaction()
    tx.read("lp", [0])
    tx.write("q", [1], index=[1])
    buf.write("p", 1.0, index=[1], accumulate=True)   # changes lp[0] through the link (A[0, 1] = 1)
    with pytest.raises(ConflictError, match="'lp'"):
        tx.commit()


def test_disjoint_concurrent_transactions_both_commit(buf):
    t1, t2 = buf.transaction(), buf.transaction()
    a = t1.read("p", [0, 1])
    b = t2.read("p", [5, 6])
    t1.write("p", a + 10, index=[0, 1])
    t2.write("p", b + 20, index=[5, 6])
    e2 = t2.commit()
    e1 = t1.commit()
    assert e1 == e2 + 1
    exp = np.arange(10.0)
    exp[[0, 1]] += 10
    exp[[5, 6]] += 20
    np.testing.assert_array_equal(buf["p"].read(), exp)
    np.testing.assert_array_equal(buf["lp"].read(), (np.arange(30.0).reshape(3, 10) % 4) @ exp)


def test_blind_writes_do_not_conflict(buf):
    t1, t2 = buf.transaction(), buf.transaction()
    t1.write("p", 1.0, index=[4])
    t2.write("p", 2.0, index=[4])
    t1.commit()
    t2.commit()                                    # last committer wins
    assert buf["p"].read()[4] == 2.0


def test_intents(buf):
    t1 = buf.transaction(intents=[("p", [1, 2]), ("q", None)])
    with pytest.raises(ConflictError, match="'p'"):
        buf.transaction(intents=[("p", [2, 3])])      # overlaps an open transaction's intents: at once
    with pytest.raises(ConflictError, match="'q'"):
        buf.transaction(intents=[("q", [7])])
    t3 = buf.transaction(intents=[("p", [3, 4])])     # disjoint: fine
    t1.write("p", [9.0, 9.0], index=[1, 2])
    t1.commit()
    with pytest.raises(ConflictError):
        buf.transaction(intents=[("p", [2, 3, 4])])     # t3 still holds 3, 4
    t4 = buf.transaction(intents=[("p", [1, 2])])      # t1 closed: its intents are released
    t4.abort()
    t3.abort()
    t5 = buf.transaction(intents=[("p", [2, 3])])
    t5.abort()
    # an intent region changed by another commit after the transaction began conflicts at commit
    t6 = buf.transaction(intents=[("p", [8])])
    e = buf.write("p", 0.5, index=[8])
    t6.write("q", [1], index=[0])
    with pytest.raises(ConflictError) as ei:
        t6.commit()
    assert ei.value.page == "p" and ei.value.epoch == e
    with pytest.raises(InvalidDeltaError):
        buf.transaction(intents=[("p", [99])])
    with pytest.raises(InvalidDeltaError):
        buf.transaction(intents=["p"])


def test_exception_inside_leaves_no_trace(buf):
    before = snapshot(buf)
    with pytest.raises(RuntimeError):
        with buf.transaction() as tx:
            tx.write("p", 5.0, index=[0, 1], accumulate=True)
            tx.write("q", [3, 4], index=[2, 3])
            buf.write("p", 1.0, index=[2])             # inside the block: staged in the transaction
            raise RuntimeError("boom")
    assert tx.state == "aborted"
    assert_same(buf, before)
    with pytest.raises(RuntimeError):
        with buf.batch():
            buf.write("p", 5.0, index=[0])
            raise RuntimeError("boom")
    assert_same(buf, before)
    # a bad delta inside the transaction: the whole transaction is refused
    with pytest.raises(InvalidDeltaError, match="'p'"):
        with buf.transaction() as tx:
            tx.write("q", [1], index=[0])
            tx.write("p", 1.0, index=[10])
    assert_same(buf, before)
    with pytest.raises(InvalidDeltaError, match="derived"):
        with buf.transaction() as tx:
            tx.write("lp", 1.0, index=[0])
    assert_same(buf, before)
    tx = buf.transaction()
    tx.write("p", 1.0, index=[0])
    tx.abort()
    with pytest.raises(MMSBError):
        tx.commit()
    assert_same(buf, before)
    assert buf.stats()["transactions"]["aborts"] >= 3


def test_read_your_writes(buf):
    with buf.transaction() as tx:
        tx.write("p", [50.0, 60.0], index=[1, 2])
        np.testing.assert_array_equal(tx.read("p", [0, 1, 2]), [0, 50, 60])
        tx.write("p", 5.0, index=[1], accumulate=True)
        assert tx.read("p", [1])[0] == 55
        tx.write("q", [7, 3], index=[4, 4], accumulate=True)
        assert tx.read("q")[4] == 3
        assert buf["p"].read()[1] == 1                 # others do not see it before the commit
    assert buf["p"].read()[1] == 55 and buf["q"].read()[4] == 3
    assert tx.state == "committed"


def test_explicit_commit_returns_epoch(buf):
    tx = buf.transaction()
    assert tx.write("p", 1.0, index=[0]) is None
    e = tx.commit()
    assert e == buf.epoch
    with buf.transaction() as tx:
        assert buf.write("p", 2.0, index=[0]) is None
    assert buf.epoch == e + 1


def test_with_transaction_retries_then_succeeds(buf):
    attempts = []

    def fn(tx):
        attempts.append(1)
        v = tx.read("p", [0])[0]
        if len(attempts) < 3:
            buf.write("p", v + 1, index=[0])           # a competing commit: this attempt must conflict
        tx.write("p", v * 10, index=[0])
        return len(attempts)

    assert mmsb.with_transaction(buf, fn, retries=5) == 3
    assert len(attempts) == 3
    assert buf["p"].read()[0] == 20.0                   # 0 -> 1 -> 2, then x10 on the third attempt


def test_with_transaction_reraises_after_retries(buf):
    attempts = []

    def fn(tx):
        attempts.append(1)
        tx.read("p", [0])
        buf.write("p", float(len(attempts)), index=[0])
        tx.write("q", [1], index=[0])

    before_q = buf["q"].read()
    with pytest.raises(ConflictError):
        mmsb.with_transaction(buf, fn, retries=3)
    assert len(attempts) == 4                           # the first try + 3 retries
    np.testing.assert_array_equal(buf["q"].read(), before_q)

    def bad(tx):
        attempts.append(1)
        raise KeyError("not retried")

    n = len(attempts)
    with pytest.raises(KeyError):
        mmsb.with_transaction(buf, bad, retries=3)
    assert len(attempts) == n + 1


def test_backoff_is_capped():
    from mmsb.txn import backoff_delays

    delays = list(backoff_delays(30))
    assert len(delays) == 30 and all(0 <= d <= 0.05 for d in delays)


def test_stats_counters(buf):
    st = buf.stats()["transactions"]
    for key in ("commits", "conflicts", "aborts", "lock_waits", "open"):
        assert isinstance(st[key], int)


def test_whole_page_write_conflicts_with_an_open_reader(buf):
    """A whole-page assignment to a page no rule reads commits on a short path, except while a transaction
    that tracks reads is open: then it is recorded, and that transaction's read of the page conflicts."""
    buf.create_page("r", 10)
    tx = buf.transaction()
    tx.read("r", [1])
    tx.write("q", [5], index=[0])
    buf.write("r", np.arange(10.0) + 1)                     # whole page, no rule reads r
    with pytest.raises(ConflictError, match="'r'"):
        tx.commit()
    with buf.batch():                                       # no tracking transaction open: the short path
        buf.write("r", np.arange(10.0) * 2)
    np.testing.assert_array_equal(buf["r"].read(), np.arange(10.0) * 2)
    tx2 = buf.transaction()
    tx2.read("q", [0])
    buf.write("r", np.zeros(10))                            # tracked, but disjoint from tx2's reads
    tx2.write("q", [7], index=[0])
    tx2.commit()
    assert buf["q"].read()[0] == 7

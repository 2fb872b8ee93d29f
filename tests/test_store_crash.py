"""kill -9 during commits loses no acknowledged commit (durability="fsync").

A subprocess writer prints each epoch after its commit returns; the parent SIGKILLs it at a random moment and
proves that every printed epoch is present after reopen, and that the state equals a deterministic numpy model
up to the recovered epoch (atomicity: a transaction of two deltas is all or nothing)."""
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

import mmsb
from mmsb.delta import Delta

TRIALS = int(os.environ.get("MMSB_CRASH_TRIALS", "15"))
N = 256

STEP_SRC = '''
import numpy as np
N = 256
def step(e):
    """The deterministic transaction committed at epoch e (>= 3): a list of (page, values, index, accumulate)."""
    rng = np.random.default_rng(e)
    idx = rng.integers(0, N, 1 + e % 17)
    ops = [("p", (rng.integers(-8, 8, idx.size) / 2).astype(np.float64), idx, True)]
    if e % 3 == 0:
        j = rng.integers(0, N, 5)
        ops.append(("q", rng.integers(0, 10**6, 5).astype(np.int64), j, e % 2 == 0))
    if e % 7 == 0:
        ops.append(("p", np.full(N, float(e)), None, False))
    return ops
'''

WRITER = STEP_SRC + '''
import sys, mmsb
buf = mmsb.open(sys.argv[1], "a", durability="fsync", segment_bytes=int(sys.argv[2]))
print("ready", buf.epoch, flush=True)
while True:
    ops = step(buf.epoch + 1)
    if len(ops) == 1:
        e = buf.write(ops[0][0], ops[0][1], index=ops[0][2], accumulate=ops[0][3])
    else:
        with buf.transaction() as tx:
            for name, vals, idx, acc in ops:
                tx.write(name, vals, index=idx, accumulate=acc)
        e = tx.commit() if tx.state == "open" else buf.epoch
    print(e, flush=True)
'''

_ns: dict = {}
exec(STEP_SRC, _ns)
step = _ns["step"]


_cache = {2: (np.zeros(N), np.full(N, np.iinfo(np.int64).max, dtype=np.int64))}


def model_at(epoch):
    """The state after epoch (numpy; incremental from the nearest cached epoch below)."""
    base = max(k for k in _cache if k <= epoch)
    p, q = (a.copy() for a in _cache[base])
    for e in range(base + 1, epoch + 1):
        for name, vals, idx, acc in step(e):
            arr = p if name == "p" else q
            if idx is None:
                arr[:] = vals
            elif acc:
                (np.add if name == "p" else np.minimum).at(arr, idx, vals)
            else:
                for i, v in zip(idx.tolist(), vals.tolist()):   # duplicates: the last occurrence wins
                    arr[i] = v
        if e % 64 == 0:
            _cache[e] = (p.copy(), q.copy())
    return p, q


def _check_recovered(root, start_epoch, printed, rng, checkpoint):
    assert printed == list(range(start_epoch + 1, start_epoch + 1 + len(printed))), (root, start_epoch, printed[:3])
    acked = printed[-1] if printed else start_epoch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # a torn tail is expected and repaired
        buf = mmsb.open(root, "a")
    with buf:
        e = buf.epoch
        # every acknowledged epoch survived; at most the one being committed is beyond it
        assert acked <= e <= acked + 1, (acked, e)
        p, q = model_at(e)
        np.testing.assert_array_equal(buf["p"].read(), p)
        np.testing.assert_array_equal(buf["q"].read(), q)
        mid = int(rng.integers(2, e + 1))
        pm, qm = model_at(mid)
        view = buf.at(mid)
        np.testing.assert_array_equal(view["p"].read(), pm)
        np.testing.assert_array_equal(view["q"].read(), qm)
        if checkpoint:
            buf.checkpoint()
    rep = mmsb.verify(root)
    assert rep.ok, rep.problems
    return e - start_epoch


@pytest.mark.reliability
def test_sigkill_loses_no_acknowledged_commit(tmp_path):
    """TRIALS kills, run as rounds of 3 independent stores in parallel (interpreter start-up dominates)."""
    width = 3
    roots = [str(tmp_path / f"s{k}") for k in range(width)]
    for root in roots:
        with mmsb.open(root, "w") as buf:
            buf.create_page("p", N, dtype="float64", semiring="plus_times")
            buf.create_page("q", N, dtype="int64", semiring="min_plus")
    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    recovered_total = 0
    trial = 0
    while trial < TRIALS:
        batch = roots[:min(width, TRIALS - trial)]
        procs = []
        errs = [str(tmp_path / f"stderr{k}") for k in range(len(batch))]
        try:
            for root, err in zip(batch, errs):
                seg = int(rng.choice([2000, 20000, 1 << 26]))
                with open(err, "w") as ef:
                    procs.append(subprocess.Popen([sys.executable, "-c", WRITER, root, str(seg)],
                                                  stdout=subprocess.PIPE, stderr=ef, text=True))
            starts = []
            for proc, err in zip(procs, errs):
                line = proc.stdout.readline().split()
                assert line and line[0] == "ready", open(err).read()
                starts.append(int(line[1]))
            for proc in procs:
                time.sleep(float(rng.uniform(0.0, 0.15)))
                proc.send_signal(signal.SIGKILL)
        finally:
            outs = []
            for proc in procs:
                proc.kill()
                outs.append(proc.stdout.read())   # not communicate(): it would skip readline's buffer
                proc.stdout.close()
                proc.wait(timeout=60)
        for root, start, out in zip(batch, starts, outs):
            printed = [int(x) for x in out.split()]
            recovered_total += _check_recovered(root, start, printed, rng, checkpoint=trial % 4 == 3)
            trial += 1
    assert recovered_total > 0


@pytest.mark.parametrize("delta, why", [
    (lambda: Delta("p", np.ones(3), index=np.array([2, 5, 10])), "index outside"),
    (lambda: Delta("p", np.ones(3), index=np.array([-1, 0, 1])), "index outside"),
    (lambda: Delta("p", np.ones(4), index=np.array([1, 2, 3])), "value count"),
    (lambda: Delta("p", np.ones(12), mask=np.ones(12, bool)), "mask of 12"),
    (lambda: Delta("p", np.ones(3), mask=np.arange(10) < 5), "value count"),
    (lambda: Delta("p", np.ones(3, np.float32), index=np.array([0, 1, 2])), "dtype"),
    (lambda: Delta("nope", np.ones(1), index=np.array([0])), "no such page"),
])
def test_logged_delta_that_does_not_fit_its_page_is_corruption(tmp_path, delta, why):
    """A record can pass its checksum and still not fit the page it names (a foreign or buggy writer): opening
    the store raises CorruptionError naming the page and what is wrong, before any page memory is touched."""
    from mmsb.delta import Txn
    from mmsb.errors import CorruptionError
    from mmsb.log import DurableLog

    root = tmp_path / "s"
    with mmsb.open(root, "w") as buf:
        buf.create_page("p", 10)
        buf.write("p", np.arange(10.0))
        epoch, txid = buf.epoch, buf._txid
    with DurableLog(str(root)) as log:
        log.sync(log.append(Txn(epoch + 1, txid + 1, [delta()])))
    with pytest.raises(CorruptionError, match=why):
        mmsb.open(root, "r")
